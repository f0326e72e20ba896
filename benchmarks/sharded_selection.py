"""Feature selection split across processes: time with N processes / 1 process on the same data, and whether the
features are the same, bit for bit. Each process gets one thread (one core), as each would get its own GPU.

    OMP_NUM_THREADS=1 accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \\
        --dynamo_backend no benchmarks/sharded_selection.py          # writes benchmarks/results/sharded_selection.json

The model, SAEs and data are those of `overheads.py` (same options). The single-process baseline runs in the main
process of the same launch while the others wait, so both timings see the same machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile

from overheads import RESULTS, build, median_time, parse_args


def main() -> dict:
    args = parse_args(description=__doc__)
    if args.output == RESULTS / "overheads.json":  # overheads.py's default: this benchmark writes its own file
        args.output = RESULTS / "sharded_selection.json"
    import torch
    from accelerate import PartialState

    from peft_sails import select_features

    state = PartialState(cpu=True)
    torch.set_num_threads(1)
    tokenizer, model, aligned, unaligned, _, config = build(args)
    run = lambda cfg: select_features(model, tokenizer, cfg, aligned, unaligned, show_progress=False)  # noqa: E731
    t_sharded = median_time(lambda: run(config), args.repeats)
    sharded = run(config)
    report = {}
    if state.is_main_process:
        single_config = dataclasses.replace(config, shard_selection=False)
        t_single = median_time(lambda: run(single_config), args.repeats)
        single = run(single_config)
        report = {
            "setup": vars(args) | {"output": str(args.output), "processes": state.num_processes,
                                   "threads_per_process": torch.get_num_threads()},
            "seconds": {"sharded": t_sharded, "single_process": t_single},
            "ratio": t_sharded / t_single,
            "same_features": sharded.features == single.features,
            "same_sae_fit": sharded.sae_fit == single.sae_fit,
        }
        args.output.write_text(json.dumps(report, indent=2, default=str))
        print(f"selection, {state.num_processes} processes / 1 process: {report['ratio']:.3f}; same features: "
              f"{report['same_features']}; same SAE fit: {report['same_sae_fit']}")
    state.wait_for_everyone()
    return report


if __name__ == "__main__":
    os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="sails-bench-hub-")  # before huggingface_hub is imported
    os.environ["HF_HUB_OFFLINE"] = "1"
    main()
