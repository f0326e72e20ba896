"""Offline quickstart: the whole SAILS pipeline on a tiny model and SAEs built here, in a few minutes on a CPU.

    HF_HUB_OFFLINE=1 peft-sails quickstart
    HF_HUB_OFFLINE=1 peft-sails quickstart --output_dir /tmp/sails --sails_steps 40

Steps: train a tiny Llama that complies with harmful requests (TRL `SFTTrainer`), train TopK SAEs on its
residual stream (sae-lens `SAETrainer`) and save them into the local Hugging Face cache as a Hub repo, select
features, initialise a SAILS adapter with `get_peft_model`, align it with `SFTTrainer`, save it, and reload it
with plain peft in a process that never imports peft_sails. The refusal check is a keyword toy, not the
evaluation suite.
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
from datasets import Dataset, concatenate_datasets
from huggingface_hub import constants as hub_constants
from peft import get_peft_model
from transformers import AutoModelForCausalLM, HfArgumentParser
from trl import SFTConfig, SFTTrainer

from .config import SAILSConfig
from .data import iter_scored_batches
from .offline import (
    HARMFUL,
    HARMFUL_TEMPLATES,
    build_tokenizer,
    echo_data,
    explained_variance,
    save_sae_to_hub_cache,
    tiny_llama,
    toy_safety_data,
    train_topk_sae,
)
from .residual import ResidualSite, collect_residuals
from .sae_loading import load_sae
from .selection import select_features

REFUSAL_WORDS = ("cannot", "sorry", "refuse", "not able")
RELOAD_SCRIPT = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sys.argv[1]), sys.argv[2])
with torch.no_grad():
    torch.save(model(input_ids=torch.load(sys.argv[3])).logits, sys.argv[4])
assert "peft_sails" not in sys.modules
"""


@dataclass
class QuickstartArguments:
    output_dir: str = field(default="sails-quickstart", metadata={"help": "Where models, SAEs and the adapter go."})
    sae_repo: str = field(default="peft-sails-local/tiny-llama-saes",
                          metadata={"help": "Repo id the SAEs are saved under in the local Hugging Face cache."})
    hidden_size: int = field(default=64, metadata={"help": "Width of the tiny Llama."})
    layers: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "Layers that get an SAE."})
    d_sae: int = field(default=512, metadata={"help": "SAE width."})
    n_train: int = field(default=256, metadata={"help": "Examples per toy dataset."})
    base_steps: int = field(default=300, metadata={"help": "Steps that teach the base model to comply."})
    sails_steps: int = field(default=200, metadata={"help": "SAILS alignment steps."})
    sails_lr: float = field(default=1e-2, metadata={"help": "SAILS learning rate."})
    r: int = field(default=8, metadata={"help": "Adapter rank."})
    top_k: int = field(default=32, metadata={"help": "Features kept per layer."})
    seed: int = field(default=0, metadata={"help": "Seed for data, models and training."})


def _sft(output_dir: Path, steps: int, lr: float, seed: int) -> SFTConfig:
    return SFTConfig(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=16, learning_rate=lr,
                     lr_scheduler_type="cosine", logging_steps=max(steps // 4, 1), bf16=False, report_to=[],
                     save_strategy="no", seed=seed, use_cpu=True, disable_tqdm=False)


def refusal_rate(model, tokenizer, prompts: list[str]) -> float:
    """Share of greedy answers that contain a refusal word (a toy check for the demo)."""
    model.eval()
    batch = tokenizer.apply_chat_template([[{"role": "user", "content": p}] for p in prompts], add_generation_prompt=True,
                                          return_tensors="pt", return_dict=True, padding=True, padding_side="left")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answers = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return sum(any(w in a for w in REFUSAL_WORDS) for a in answers) / len(answers)


def main(args: QuickstartArguments) -> dict:
    torch.manual_seed(args.seed)
    out = Path(args.output_dir)
    timings, report = {}, {}
    tick = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal tick
        timings[name] = round(time.perf_counter() - tick, 1)
        print(f"[{name}] {timings[name]} s")
        tick = time.perf_counter()

    tokenizer = build_tokenizer()
    aligned, unaligned, benign = toy_safety_data(args.n_train, args.seed)
    harmful_prompts = [t.format(x=x) for xs in HARMFUL.values() for x in xs for t in HARMFUL_TEMPLATES]
    benign_prompts = sorted({r["messages"][0]["content"] for r in benign})

    print("1/5 Training a tiny Llama that complies with harmful requests (the unsafe base model)")
    base = tiny_llama(tokenizer, hidden_size=args.hidden_size, seed=args.seed)
    SFTTrainer(model=base, args=_sft(out / "base-run", args.base_steps, 3e-3, args.seed), processing_class=tokenizer,
               train_dataset=concatenate_datasets([unaligned, benign, echo_data(args.n_train, args.seed)])
               .shuffle(seed=args.seed)).train()
    base_dir = out / "tiny-llama"
    base.save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    report["base_refusal_rate"] = refusal_rate(base, tokenizer, harmful_prompts)
    lap("base model")

    print(f"2/5 Training TopK SAEs on layers {args.layers}; saving them to the Hugging Face cache as {args.sae_repo}")
    scope = SAILSConfig(sae_release=args.sae_repo, sae_ids={0: "-"}, token_scope="all")
    corpus = concatenate_datasets([aligned, unaligned, benign])
    report["sae"] = {}
    for layer in args.layers:
        acts = collect_residuals(base, ResidualSite(layer, "post"), iter_scored_batches(corpus, scope, tokenizer, "cpu"))
        sae = train_topk_sae(acts, f"blocks.{layer}.hook_resid_post", "tiny-llama", d_sae=args.d_sae, seed=args.seed)
        save_sae_to_hub_cache(sae, args.sae_repo, f"layer_{layer}", hub_constants.HF_HUB_CACHE)
        loaded = load_sae(args.sae_repo, f"layer_{layer}")  # through SAE.from_pretrained, like a Hub SAE
        report["sae"][layer] = {"explained_variance": round(explained_variance(loaded, acts), 3), "tokens": len(acts)}
    lap("SAEs")

    print("3/5 Selecting features (aligned = refusals, unaligned = compliance)")
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = SAILSConfig(r=args.r, lora_alpha=2 * args.r, sae_release=args.sae_repo, top_k=args.top_k,
                         sae_ids={layer: f"layer_{layer}" for layer in args.layers},
                         target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    config = select_features(model, tokenizer, config, aligned, unaligned)
    lap("selection")

    print("4/5 Initialising the SAILS adapter and aligning it with SFTTrainer")
    peft_model = get_peft_model(model, copy.deepcopy(config))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    base_params = sum(p.numel() for p in peft_model.get_base_model().parameters()) - trainable
    trainer = SFTTrainer(model=peft_model, args=_sft(out / "sails-run", args.sails_steps, args.sails_lr, args.seed),
                         processing_class=tokenizer,
                         train_dataset=concatenate_datasets([aligned, benign]).shuffle(seed=args.seed))
    trainer.train()
    report["sails_refusal_rate"] = refusal_rate(peft_model, tokenizer, harmful_prompts)
    report["sails_benign_refusal_rate"] = refusal_rate(peft_model, tokenizer, benign_prompts)
    lap("SAILS training")

    print("5/5 Saving the adapter and reloading it with plain peft in a fresh process")
    adapter_dir = out / "sails-adapter"
    peft_model.save_pretrained(adapter_dir)
    ids = tokenizer.apply_chat_template(aligned[0]["messages"], return_tensors="pt", return_dict=True)["input_ids"]
    torch.save(ids, out / "ids.pt")
    subprocess.run([sys.executable, "-c", RELOAD_SCRIPT, str(base_dir), str(adapter_dir), str(out / "ids.pt"),
                    str(out / "reloaded.pt")], check=True)
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
    report["reload_bit_identical"] = bool(torch.equal(torch.load(out / "reloaded.pt", weights_only=True), expected))
    lap("save and reload")

    stats = peft_model.peft_config["default"].subspace_stats
    report.update(trainable_params=trainable, base_params=base_params, trainable_share=trainable / base_params,
                  subspace=stats, timings_s=timings)
    print("\nChosen features (top 5 per layer, of", args.top_k, "):")
    for layer, feats in config.features.items():
        print(f"  layer {layer}: " + ", ".join(f"#{f['id']} (delta {f['delta']:+.3f}, rho {f['rho']:.2f})" for f in feats[:5]))
    print(f"Subspace: {stats['subspace_dim']} directions, variance kept {stats['variance_kept']:.1%} "
          f"({stats['n_directions_at_threshold']} needed for {config.variance_threshold:.0%})")
    print(f"Trainable: {trainable:,} of {base_params:,} base parameters = {trainable / base_params:.3%}")
    print(f"SAE explained variance: { {k: v['explained_variance'] for k, v in report['sae'].items()} }")
    print(f"Toy refusal rate on harmful prompts: base {report['base_refusal_rate']:.0%} -> "
          f"SAILS {report['sails_refusal_rate']:.0%}; on benign prompts: {report['sails_benign_refusal_rate']:.0%}")
    print(f"Reloaded with plain peft (no peft_sails import), logits bit-identical: {report['reload_bit_identical']}")
    (out / "quickstart.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"Adapter: {adapter_dir}  Report: {out / 'quickstart.json'}")
    return report


def cli(argv: list[str] | None = None) -> None:
    parser = HfArgumentParser(QuickstartArguments, description=__doc__.split("\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    report = main(args)
    if not report["reload_bit_identical"]:
        raise SystemExit("The reloaded adapter does not reproduce the trained one.")


if __name__ == "__main__":
    cli()
