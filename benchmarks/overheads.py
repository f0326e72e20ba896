"""What SAILS costs on top of LoRA, as ratios measured in one process (the machine is noisy; absolute times are not
the point). Offline: a Llama built from a config, a random ReLU SAE in a temporary Hugging Face cache.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python benchmarks/overheads.py            # writes benchmarks/results/overheads.json
    python benchmarks/overheads.py --hidden_size 512 --n_examples 512 --repeats 5

Rows: selection (stage 1) time / one forward pass over the same data, with the default (`saes_per_pass=None`:
passes planned from the free memory), one SAE at a time and all SAEs in one pass; initialisation (stages 2-3) time / one
training epoch; training step time SAILS / LoRA at equal rank; peak RSS of selection at 4x / 1x the data
(each in a fresh subprocess).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None, description: str = __doc__) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--d_sae", type=int, default=4096)
    parser.add_argument("--sae_layers", type=int, nargs="+", default=[1, 2], help="Layers that get an SAE.")
    parser.add_argument("--n_examples", type=int, default=256, help="Rows of aligned and of unaligned data.")
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="Timings are medians over this many repeats.")
    parser.add_argument("--output", type=Path, default=RESULTS / "overheads.json")
    parser.add_argument("--selection_rss", type=int, metavar="N",
                        help="Internal: run selection on N examples and print its peak RSS in KiB as JSON.")
    return parser.parse_args(argv)


def build(args: argparse.Namespace):
    """Tokenizer, model, toy data and a SAILS config whose random SAEs (layers 1, 2) sit in the Hub cache."""
    import torch

    from peft_sails import SAILSConfig
    from peft_sails.offline import build_tokenizer, make_sae, save_sae_to_hub_cache, tiny_llama, toy_safety_data

    tokenizer = build_tokenizer()
    model = tiny_llama(tokenizer, hidden_size=args.hidden_size, num_layers=args.num_layers)
    generator = torch.Generator().manual_seed(0)
    for layer in args.sae_layers:
        sae = make_sae(torch.randn(args.d_sae, args.hidden_size, generator=generator), f"blocks.{layer}.hook_resid_post",
                       "tiny-llama", b_enc=torch.full((args.d_sae,), -0.5))
        save_sae_to_hub_cache(sae, "local-org/bench-saes", f"layer_{layer}", os.environ["HF_HUB_CACHE"])
    aligned, unaligned, benign = toy_safety_data(args.n_examples, seed=0)
    config = SAILSConfig(r=args.r, lora_alpha=2 * args.r, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                         sae_release="local-org/bench-saes", sae_ids={l: f"layer_{l}" for l in args.sae_layers}, top_k=64)
    return tokenizer, model, aligned, unaligned, benign, config


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def selection_rss(args: argparse.Namespace) -> None:
    """Child process: peak RSS (KiB) of select_features on `args.selection_rss` examples."""
    from peft_sails import select_features
    from peft_sails.offline import toy_safety_data

    tokenizer, model, _, _, _, config = build(args)
    aligned, unaligned, _ = toy_safety_data(args.selection_rss, seed=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    select_features(model, tokenizer, config, aligned, unaligned, show_progress=False)
    print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "peak_rss_before_selection_kib": before}))


def rss_of_selection(args: argparse.Namespace, n: int) -> dict[str, int]:
    cmd = [sys.executable, __file__, "--selection_rss", str(n), "--hidden_size", str(args.hidden_size),
           "--num_layers", str(args.num_layers), "--d_sae", str(args.d_sae), "--r", str(args.r),
           "--sae_layers", *map(str, args.sae_layers)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(args: argparse.Namespace) -> dict:
    import torch
    from datasets import concatenate_datasets
    from peft import get_peft_model
    from tqdm.auto import tqdm
    from trl import SFTConfig, SFTTrainer

    from peft_sails import select_features
    from peft_sails.data import iter_scored_batches
    from peft_sails.initialization import compute_sails_subspace, write_sails_weights

    tokenizer, model, aligned, unaligned, benign, config = build(args)
    progress = tqdm(total=6, desc="overheads")

    def forward_pass():
        with torch.no_grad():
            for data in (aligned, unaligned):
                for batch in iter_scored_batches(data, config, tokenizer, "cpu"):
                    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)

    t_forward = median_time(forward_pass, args.repeats)
    progress.update()
    t_select = median_time(lambda: select_features(model, tokenizer, config, aligned, unaligned,
                                                   show_progress=False), args.repeats)  # default: passes from memory
    one_at_a_time = copy.deepcopy(config)
    one_at_a_time.saes_per_pass = 1
    t_select_one_sae = median_time(lambda: select_features(model, tokenizer, one_at_a_time, aligned, unaligned,
                                                           show_progress=False), args.repeats)
    one_pass = copy.deepcopy(config)
    one_pass.saes_per_pass = len(config.sae_ids)
    t_select_one_pass = median_time(lambda: select_features(model, tokenizer, one_pass, aligned, unaligned,
                                                            show_progress=False), args.repeats)
    selected = select_features(model, tokenizer, config, aligned, unaligned, show_progress=False)
    progress.update()

    train_data = concatenate_datasets([aligned, benign])
    steps_per_epoch = len(train_data) // 8

    def trainer_for(peft_config, steps):
        sft = SFTConfig(output_dir=tempfile.mkdtemp(), max_steps=steps, per_device_train_batch_size=8, bf16=False,
                        use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True, seed=0)
        return SFTTrainer(model=copy.deepcopy(model), args=sft, train_dataset=train_data, processing_class=tokenizer,
                          peft_config=copy.deepcopy(peft_config))

    def init_only():
        lora = get_peft_model(copy.deepcopy(model), selected.stock_lora_config())
        subspace, _ = compute_sails_subspace(lora.get_base_model(), selected, show_progress=False)
        write_sails_weights(lora, "default", selected, subspace)

    t_init = median_time(init_only, args.repeats)
    progress.update()
    t_epoch = median_time(lambda: trainer_for(selected.stock_lora_config(), steps_per_epoch).train(), 1)
    progress.update()
    trainers = {"lora": trainer_for(selected.stock_lora_config(), 30), "sails": trainer_for(selected, 30)}
    samples = {name: [] for name in trainers}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both alike
        for name, trainer in trainers.items():
            samples[name].append(median_time(trainer.train, 1) / 30)
    step_times = {name: statistics.median(values) for name, values in samples.items()}
    progress.update()
    rss = {n: rss_of_selection(args, n) for n in (args.n_examples, 4 * args.n_examples)}
    progress.update()
    progress.close()
    report = {
        "setup": vars(args) | {"output": str(args.output), "torch_threads": torch.get_num_threads()},
        "seconds": {"forward_pass": t_forward, "selection": t_select, "selection_one_sae": t_select_one_sae,
                    "selection_one_pass": t_select_one_pass,
                    "init": t_init, "epoch": t_epoch,
                    "step_lora": step_times["lora"], "step_sails": step_times["sails"]},
        "ratios": {"selection (default: passes planned from memory) / forward pass": t_select / t_forward,
                   "selection (one SAE at a time) / forward pass": t_select_one_sae / t_forward,
                   "selection (all SAEs in one pass) / forward pass": t_select_one_pass / t_forward,
                   "init / epoch": t_init / t_epoch,
                   "step SAILS / LoRA": step_times["sails"] / step_times["lora"],
                   "selection peak RSS 4x / 1x": rss[4 * args.n_examples]["peak_rss_kib"]
                   / rss[args.n_examples]["peak_rss_kib"]},
        "peak_rss_kib": {"1x": rss[args.n_examples], "4x": rss[4 * args.n_examples]},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2, default=str))
    for name, value in report["ratios"].items():
        print(f"{name}: {value:.3f}")
    return report


if __name__ == "__main__":
    parsed = parse_args()
    # a throwaway Hub cache for the benchmark's SAEs, set before anything imports huggingface_hub
    os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="sails-bench-hub-")
    os.environ["HF_HUB_OFFLINE"] = "1"
    selection_rss(parsed) if parsed.selection_rss else main(parsed)
