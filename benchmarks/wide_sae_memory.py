"""Peak memory of each SAILS stage with a wide SAE, against loading the whole SAE.

A Gemma Scope replica 131,072 features wide at d = 3,584 (`gemma-scope-9b-pt-res-canonical`,
`layer_L/width_131k/canonical`: params.npz, float32, 3.76 GB) is written into a temporary Hugging Face cache with a
gemma-2-9b-it replica (tests/replica.py). Each stage then runs in a fresh process, which loads the model and data,
resets its peak resident set size (`/proc/self/clear_refs`), runs the stage and reports the peak minus what it held
before (sae-lens' registry is read first: a fixed ~50 MB whatever the SAE; memory-mapped file pages that a stage
touches count, as they are resident):

- `whole`: sae-lens' `SAE.from_pretrained` of the SAE (what selection and subspace building loaded before 0.3);
- `selection`: `select_features` on the model (encoder loaded, decoder rows read for features that fire);
- `subspace`: `compute_sails_subspace` with the features selection chose (selected decoder rows only).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python benchmarks/wide_sae_memory.py     # ~4 min, 8 GB of disk at peak
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RELEASE = "gemma-scope-9b-pt-res-canonical"
STAGES = ("whole", "selection", "subspace")  # each measured in a fresh process; "build" writes the replicas


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=2, help="the SAE's layer (the model gets layer + 2 layers)")
    parser.add_argument("--width", default="131k", help="Gemma Scope width in the SAE id (16k, 131k, ...)")
    parser.add_argument("--n_rows", type=int, default=32, help="harmful requests; each gives an aligned and an "
                                                               "unaligned chat for selection")
    parser.add_argument("--top_k", type=int, default=64, help="features selected per layer")
    parser.add_argument("--output", type=Path, default=RESULTS / "wide_sae_memory.json")
    parser.add_argument("--stage", choices=("build", *STAGES), help=argparse.SUPPRESS)  # set for the per-stage processes
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def _status(field: str) -> int:
    """A `/proc/self/status` field (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def run_stage(args: argparse.Namespace) -> dict:
    """Run one stage in this (fresh) process and return its peak extra resident memory."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(ROOT / "tests"))
    from replica import GEMMA2_IDS, harmful_rows

    from peft_sails import SAILSConfig, select_features
    from peft_sails.initialization import compute_sails_subspace
    from peft_sails.sae_loading import load_sae
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    torch.set_grad_enabled(False)
    model_id, sae_id = GEMMA2_IDS["9b"], f"layer_{args.layer}/width_{args.width}/canonical"
    tokenizer = AutoTokenizer.from_pretrained(model_id)
    model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32)
    rows = harmful_rows(args.n_rows)
    aligned, unaligned = (Dataset.from_list([{"messages": [{"role": "user", "content": r["prompt"]},
                                                           {"role": "assistant", "content": r[column]}]}
                                             for r in rows]) for column in ("chosen", "rejected"))
    config = SAILSConfig(r=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], sae_release=RELEASE,
                         sae_ids={args.layer: sae_id}, top_k=args.top_k)
    features_file = args.cache / "features.json"
    if args.stage == "subspace":
        config.features = {int(k): v for k, v in json.loads(features_file.read_text()).items()}
    get_pretrained_saes_directory()  # sae-lens' registry (~50 MB, read once per process, whatever the SAE)
    before = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    if args.stage == "whole":
        sae = load_sae(RELEASE, sae_id)
        size = sum(p.numel() * p.element_size() for p in sae.parameters())
        out = {"sae_bytes": size, "d_sae": sae.cfg.d_sae, "d_in": sae.cfg.d_in}
    elif args.stage == "selection":
        selected = select_features(model, tokenizer, config, aligned, unaligned, show_progress=False)
        features_file.write_text(json.dumps(selected.features))
        out = {"sae_fit": selected.sae_fit[args.layer]}
    else:
        subspace, stats = compute_sails_subspace(model, config, show_progress=False)
        out = {"subspace_dim": stats["subspace_dim"]}
    return {**out, "peak_extra_bytes": _status("VmHWM") - before, "rss_before_bytes": before}


def build(cache: Path, args: argparse.Namespace) -> None:
    """The gemma-2-9b-it replica and the wide Gemma Scope replica, calibrated on the model's residual stream."""
    sys.path.insert(0, str(ROOT / "tests"))
    from replica import gemma2_replica, gemma_scope_replica, residual_stats

    snapshot = gemma2_replica(cache, "9b", num_layers=args.layer + 2)
    gemma_scope_replica(cache, "9b", [args.layer], calibration=residual_stats(snapshot, [args.layer]),
                        sae_id_template=f"layer_{{layer}}/width_{args.width}/canonical")


def main() -> None:
    args = parse_args()
    if args.stage == "build":
        build(args.cache, args)
        return
    if args.stage:
        print(json.dumps(run_stage(args)))
        return
    from tqdm.auto import tqdm

    with tempfile.TemporaryDirectory(prefix="sails-wide-sae-") as tmp:
        cache = Path(tmp)
        env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
        common = ["--cache", tmp, "--layer", str(args.layer), "--width", args.width, "--n_rows", str(args.n_rows),
                  "--top_k", str(args.top_k)]
        results = {}
        for stage in tqdm(("build", *STAGES), desc="replicas, then one process per stage"):
            done = subprocess.run([sys.executable, __file__, "--stage", stage, *common], check=True, env=env,
                                  capture_output=True, text=True)
            if stage != "build":
                results[stage] = json.loads(done.stdout.strip().splitlines()[-1])
    size = results["whole"]["sae_bytes"]
    shown = lambda v: str(v.resolve().relative_to(ROOT)) if v.resolve().is_relative_to(ROOT) else str(v)  # noqa: E731
    report = {"setup": {k: (shown(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in
                        ("stage", "cache")} | {"release": RELEASE, "d_sae": results["whole"]["d_sae"],
                                               "d_in": results["whole"]["d_in"], "sae_bytes": size},
              "stages": results,
              "peak_extra_over_sae_size": {s: results[s]["peak_extra_bytes"] / size for s in STAGES}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"SAE {report['setup']['d_sae']} x {report['setup']['d_in']}: {size / 2**30:.2f} GiB of weights")
    for stage in STAGES:
        print(f"  {stage:>9}: peak extra {results[stage]['peak_extra_bytes'] / 2**30:6.3f} GiB = "
              f"{100 * report['peak_extra_over_sae_size'][stage]:5.1f}% of the SAE")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
