"""Offline quickstart: the whole SAILS pipeline on a tiny model and SAEs built here, in a few minutes on a CPU.

    HF_HUB_OFFLINE=1 peft-sails quickstart
    HF_HUB_OFFLINE=1 peft-sails quickstart --output_dir /tmp/sails --sails_steps 40

Steps: train a tiny Llama that complies with harmful requests (TRL `SFTTrainer`), train TopK SAEs on its
residual stream (sae-lens `SAETrainer`) and save them into the local Hugging Face cache as a Hub repo, select
features, initialise a SAILS adapter with `get_peft_model`, align it with `SFTTrainer`, save it, and reload it
with plain peft in a process that never imports peft_sails. Refusals are counted by the pattern judge of
`peft_sails.eval` on the training prompts: a check that the pipeline works, not a benchmark.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import concatenate_datasets, load_dataset
from huggingface_hub import constants as hub_constants
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser
from trl import SFTTrainer

from .config import SAILSConfig
from .data import to_chat
from .eval import GenerationSettings, PatternRefusalJudge, generate_responses
from .quiet import quiet_libraries, training_progress
from .selection import select_features
from .world import WorldArguments, sft_args, build_offline_world

RELOAD_SCRIPT = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), sys.argv[2])
with torch.no_grad():
    torch.save(model(input_ids=torch.load(sys.argv[3], weights_only=True)).logits, sys.argv[4])
assert "peft_sails" not in sys.modules
"""


@dataclass
class QuickstartArguments(WorldArguments):
    output_dir: str = field(default="sails-quickstart", metadata={"help": "Where models, data and the adapter go."})
    sails_steps: int = field(default=200, metadata={"help": "SAILS alignment steps."})
    sails_lr: float = field(default=1e-2, metadata={"help": "SAILS learning rate."})
    r: int = field(default=8, metadata={"help": "Adapter rank."})
    top_k: int = field(default=32, metadata={"help": "Features kept per layer."})


def refusal_rate(model, tokenizer, prompts: list[str]) -> float:
    """Share of greedy answers (12 tokens) that the pattern judge of `peft_sails.eval` counts as refusals."""
    responses = generate_responses(model, tokenizer, prompts, GenerationSettings(max_new_tokens=12, batch_size=64),
                                   show_progress=False)
    return sum(j.refused for j in PatternRefusalJudge().judge(prompts, responses)) / len(prompts)


def main(args: QuickstartArguments) -> dict:
    out = Path(args.output_dir)
    print("1/4 Building the offline world: a tiny Llama that complies with harmful requests, TopK SAEs on its "
          f"residual stream at layers {args.layers} (saved to the Hugging Face cache as {args.sae_repo})")
    world = build_offline_world(args)
    timings = dict(world.seconds)
    tick = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(world.model_dir)
    model = AutoModelForCausalLM.from_pretrained(world.model_dir)
    harmful = load_dataset(world.harmful_dir, split="train")
    aligned, unaligned = to_chat(harmful, "prompt", "chosen"), to_chat(harmful, "prompt", "rejected")
    benign = to_chat(load_dataset(world.benign_dir, split="train"), "prompt", "response")
    harmful_prompts = sorted(set(harmful["prompt"]))
    benign_prompts = sorted({r["messages"][0]["content"] for r in benign})
    report = {"sae_explained_variance": world.sae_explained_variance,
              "base_refusal_rate": refusal_rate(model, tokenizer, harmful_prompts)}

    print("2/4 Selecting features (aligned = refusals, unaligned = compliance, same prompts)")
    config = SAILSConfig(r=args.r, lora_alpha=2 * args.r, sae_release=world.sae_repo, top_k=args.top_k,
                         sae_ids=world.sae_ids,
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    config = select_features(model, tokenizer, config, aligned, unaligned)
    timings["selection"] = round(time.perf_counter() - tick, 1)

    print("3/4 Initialising the SAILS adapter and aligning it with SFTTrainer")
    tick = time.perf_counter()
    peft_model = get_peft_model(model, copy.deepcopy(config))
    stats = peft_model.peft_config["default"].subspace_stats  # counted at initialisation
    trainable, base_params = stats["n_adapter_params"], stats["n_base_params"]
    SFTTrainer(model=peft_model, args=sft_args(out / "sails-run", args.sails_steps, args.sails_lr, args.seed),
               processing_class=tokenizer, callbacks=[training_progress("aligning the SAILS adapter")],
               train_dataset=concatenate_datasets([aligned, benign]).shuffle(seed=args.seed)).train()
    report["sails_refusal_rate"] = refusal_rate(peft_model, tokenizer, harmful_prompts)
    report["sails_benign_refusal_rate"] = refusal_rate(peft_model, tokenizer, benign_prompts)
    timings["sails_training"] = round(time.perf_counter() - tick, 1)

    print("4/4 Saving the adapter and reloading it with plain peft in a fresh process")
    tick = time.perf_counter()
    adapter_dir = out / "sails-adapter"
    peft_model.save_pretrained(adapter_dir)
    ids = tokenizer.apply_chat_template(aligned[0]["messages"], return_tensors="pt", return_dict=True)["input_ids"]
    torch.save(ids, out / "ids.pt")
    reload = subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, world.model_dir, str(adapter_dir),
                             str(out / "ids.pt"), str(out / "reloaded.pt")], capture_output=not args.verbose, text=True)
    if reload.returncode:
        raise SystemExit(f"Reloading the adapter with plain peft failed:\n{reload.stderr or ''}")
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    report["reload_bit_identical"] = bool(torch.equal(torch.load(out / "reloaded.pt", weights_only=True), expected))
    timings["save_and_reload"] = round(time.perf_counter() - tick, 1)

    report.update(trainable_params=trainable, base_params=base_params, trainable_share=trainable / base_params,
                  subspace=stats, seconds=timings)
    print("\nChosen features (top 5 per layer, of", args.top_k, "):")
    for layer, feats in config.features.items():
        print(f"  layer {layer}: " + ", ".join(f"#{f['id']} (delta {f['delta']:+.3f}, rho {f['rho']:.2f})" for f in feats[:5]))
    print(f"Subspace: {stats['subspace_dim']} directions, variance kept {stats['variance_kept']:.1%} "
          f"({stats['n_directions_at_threshold']} needed for {config.variance_threshold:.0%})")
    print(f"Trainable: {trainable:,} of {base_params:,} base parameters = {trainable / base_params:.3%}")
    print(f"SAE explained variance: {world.sae_explained_variance}")
    print(f"Refusal rate (pattern judge, training prompts), harmful: base {report['base_refusal_rate']:.0%} -> "
          f"SAILS {report['sails_refusal_rate']:.0%}; benign: {report['sails_benign_refusal_rate']:.0%}")
    print(f"Reloaded with plain peft (no peft_sails import), logits bit-identical: {report['reload_bit_identical']}")
    print(f"Seconds per stage: {timings}")
    (out / "quickstart.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"\nFiles:\n  adapter (plain LoRA + sails_config.json + card): {adapter_dir}\n"
          f"  report: {out / 'quickstart.json'}\n  base model and tokenizer: {world.model_dir}\n"
          f"  data: {world.harmful_dir}, {world.benign_dir}, world manifest {out / 'world.json'}\n"
          f"  reload check: {out / 'ids.pt'}, {out / 'reloaded.pt'}\n"
          f"  SAEs: Hugging Face cache ({hub_constants.HF_HUB_CACHE}), repo {world.sae_repo}")
    return report


def cli(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser(QuickstartArguments, description=__doc__.split("\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    with quiet_libraries(args.verbose):
        report = main(args)
    if not report["reload_bit_identical"]:
        raise SystemExit("The reloaded adapter does not reproduce the trained one.")


if __name__ == "__main__":
    cli()
