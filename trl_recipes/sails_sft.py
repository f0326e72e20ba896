"""SAILS safety alignment with TRL: select SAE features, then SFT with a SAILS adapter.

```bash
# Offline, on the tiny world (build it first with `peft-sails offline-world`):
HF_HUB_OFFLINE=1 python trl_recipes/sails_sft.py --config trl_recipes/tiny-offline.yaml

# Gemma-2-9B-it with Gemma Scope 16k residual SAEs at layers 10/15/20/25/30, as in the paper:
accelerate launch trl_recipes/sails_sft.py --config trl_recipes/gemma-2-9b.yaml

# Shapes and trainable share only: builds the model on the meta device from a config shipped here, no download:
python trl_recipes/sails_sft.py --config trl_recipes/gemma-2-9b.yaml --dry_run
```

Stage 1 is split across processes: each scores its share of the selection data, the sums are gathered, and all
end with the features one process would select from all the data; stages 2-3 run inside `SFTTrainer`
(`get_peft_model`). The main process saves the adapter with its SAILS card and, with
`--push_to_hub`, pushes adapter, sidecar and card in one commit.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

# peft_sails first: here it holds the notice bitsandbytes prints when peft imports it (see peft_sails.quiet)
import peft_sails  # noqa: F401,I001  (also registers the SAILS tuner)
import torch
from datasets import concatenate_datasets, load_dataset
from peft import get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from trl import ModelConfig, SFTConfig, TrlParser

from peft_sails import SAILSConfig, select_features
from peft_sails.data import to_chat
from peft_sails.hub import push_sails_adapter
from peft_sails.quiet import quiet_libraries, verbose_requested
from peft_sails.trainer import SailsSFTTrainer, training_summary

RECIPES = Path(__file__).resolve().parent


@dataclass
class SailsScriptArguments:
    """Data and SAILS settings (the LoRA rank, alpha and target modules come from TRL's `ModelConfig`)."""

    harmful_dataset: str = field(default="LLM-LAT/harmful-dataset",
                                 metadata={"help": "Harmful requests, each with a refusal and a compliance."})
    harmful_split: str = field(default="train", metadata={"help": "Split of the harmful dataset."})
    prompt_column: str = field(default="prompt", metadata={"help": "Request column of the harmful dataset."})
    refusal_column: str = field(default="chosen", metadata={"help": "Refusal column (aligned data)."})
    compliance_column: str = field(default="rejected", metadata={"help": "Compliance column (unaligned data)."})
    benign_dataset: Optional[str] = field(default="LLM-LAT/benign-dataset",
                                          metadata={"help": "Benign requests with helpful answers, mixed into SFT."})
    benign_split: str = field(default="train", metadata={"help": "Split of the benign dataset."})
    benign_prompt_column: str = field(default="prompt", metadata={"help": "Request column of the benign data."})
    benign_response_column: str = field(default="response", metadata={"help": "Answer column of the benign data."})
    n_harmful: Optional[int] = field(default=None, metadata={"help": "Use the first N harmful rows (all if unset)."})
    n_benign: Optional[int] = field(default=None, metadata={"help": "Use the first N benign rows (all if unset)."})
    selection_samples: int = field(default=512, metadata={"help": "Harmful rows used for feature selection."})
    sae_release: Optional[str] = field(default=None, metadata={"help": "sae-lens release or Hub repo of the SAEs."})
    sae_layers: list[int] = field(default_factory=list, metadata={"help": "Layers that get an SAE."})
    sae_id_template: str = field(default="layer_{layer}/width_16k/canonical",
                                 metadata={"help": "SAE id per layer, formatted with {layer}."})
    top_k: int = field(default=64, metadata={"help": "Features kept per layer."})
    variance_threshold: float = field(default=0.8, metadata={"help": "Variance the subspace keeps."})
    min_firing_rate: float = field(default=0.0, metadata={"help": "Minimum firing rate of a selected feature."})
    token_scope: str = field(default="response", metadata={"help": "response | all | prompt | last_prompt."})
    writer_init: str = field(default="basis", metadata={"help": "basis | lora: what o/down projections get."})
    selection_batch_size: int = field(default=8, metadata={"help": "Batch size of the selection passes."})
    check_sae_model: bool = field(
        default=True, metadata={"help": "Refuse SAEs whose metadata names another model (see SAILSConfig)."}
    )
    dry_run: bool = field(default=False, metadata={"help": "Print LoRA shapes and trainable share, then stop."})
    verbose: bool = field(default=False, metadata={
        "help": "Show the datasets and Hub progress bars and the libraries' deprecation warnings (hidden by default; "
                "the Trainer's logs always show)."})
    model_config_file: Optional[str] = field(
        default=None, metadata={"help": "config.json of the model for --dry_run (shipped in trl_recipes/configs)."}
    )


def sails_config(script_args: SailsScriptArguments, model_args: ModelConfig,
                 max_length: Optional[int] = None) -> SAILSConfig:
    """The SAILS config of a run; selection truncates examples at SFT's `max_length` (SAILSConfig's default if None)."""
    if not script_args.sae_release or not script_args.sae_layers:
        raise ValueError("Set `sae_release` and `sae_layers` (e.g. in the recipe YAML).")
    return SAILSConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules, use_rslora=model_args.use_rslora,
        sae_release=script_args.sae_release,
        sae_ids={layer: script_args.sae_id_template.format(layer=layer) for layer in script_args.sae_layers},
        top_k=script_args.top_k, variance_threshold=script_args.variance_threshold,
        min_firing_rate=script_args.min_firing_rate, token_scope=script_args.token_scope,
        writer_init=script_args.writer_init, selection_batch_size=script_args.selection_batch_size,
        check_sae_model=script_args.check_sae_model, **({"max_length": max_length} if max_length else {}),
    )


def dry_run(script_args: SailsScriptArguments, model_args: ModelConfig) -> dict:
    """Build the model on the meta device and report LoRA shapes and the trainable share (no weights, no SAE)."""
    path = script_args.model_config_file
    if path is None:
        raise ValueError("--dry_run needs --model_config_file (a config.json, e.g. trl_recipes/configs/*.json).")
    if not Path(path).is_absolute() and not Path(path).exists():
        path = RECIPES.parent / path
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    n_base = sum(p.numel() for p in model.parameters())
    peft_model = get_peft_model(model, sails_config(script_args, model_args).stock_lora_config())
    shapes = {}
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            key = ".".join(n for n in name.split(".") if not n.isdigit() and n not in ("base_model", "model"))
            shapes.setdefault(key, tuple(p.shape))
    n_trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    report = {"lora_shapes": shapes, "trainable": n_trainable, "base": n_base,
              "share_of_base": n_trainable / n_base, "share_of_total": n_trainable / (n_base + n_trainable)}
    print("LoRA shapes (per layer):")
    for key, shape in shapes.items():
        print(f"  {key}: {list(shape)}")
    print(f"Trainable parameters: {n_trainable:,}; base model: {n_base:,}")
    print(f"Trainable share of the base model (as the paper reports): {report['share_of_base']:.3%}")
    print(f"Trainable share of all parameters (PEFT's print_trainable_parameters): {report['share_of_total']:.3%}")
    return report


def load_data(script_args: SailsScriptArguments):
    """(aligned, unaligned, sft) chat datasets from the harmful (request/refusal/compliance) and benign sets."""
    harmful = load_dataset(script_args.harmful_dataset, split=script_args.harmful_split)
    if script_args.n_harmful:
        harmful = harmful.select(range(min(script_args.n_harmful, len(harmful))))
    aligned = to_chat(harmful, script_args.prompt_column, script_args.refusal_column)
    unaligned = to_chat(harmful, script_args.prompt_column, script_args.compliance_column)
    parts = [aligned]
    if script_args.benign_dataset:
        benign = load_dataset(script_args.benign_dataset, split=script_args.benign_split)
        if script_args.n_benign:
            benign = benign.select(range(min(script_args.n_benign, len(benign))))
        parts.append(to_chat(benign, script_args.benign_prompt_column, script_args.benign_response_column))
    return aligned, unaligned, concatenate_datasets(parts).shuffle(seed=0)


def main(script_args: SailsScriptArguments, training_args: SFTConfig, model_args: ModelConfig):
    if script_args.dry_run:
        return dry_run(script_args, model_args)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                                 dtype=model_args.dtype or "auto",
                                                 attn_implementation=model_args.attn_implementation)
    aligned, unaligned, sft_data = load_data(script_args)
    n_select = min(script_args.selection_samples, len(aligned))
    config = select_features(model, tokenizer, sails_config(script_args, model_args, training_args.max_length),
                             aligned.select(range(n_select)), unaligned.select(range(n_select)))
    trainer = SailsSFTTrainer(model=model, args=training_args, train_dataset=sft_data, processing_class=tokenizer,
                              peft_config=config)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    datasets = [d for d in (script_args.harmful_dataset, script_args.benign_dataset) if d]
    if trainer.accelerator.is_main_process:
        training = training_summary(trainer, datasets)
        Path(training_args.output_dir, "sails_training.json").write_text(json.dumps(training, indent=2))
        trainer.create_model_card()
        trainer.accelerator.print(f"Adapter and SAILS card saved to {training_args.output_dir}:\n" + "\n".join(
            f"  {path}" for path in sorted(Path(training_args.output_dir).iterdir()) if path.is_file()))
        if training_args.push_to_hub:
            commit = push_sails_adapter(training_args.output_dir, trainer.hub_model_id or training_args.hub_model_id,
                                        token=training_args.hub_token, private=training_args.hub_private_repo)
            trainer.accelerator.print(f"Pushed to {commit.commit_url}")
    return trainer


def make_parser() -> TrlParser:
    return TrlParser((SailsScriptArguments, SFTConfig, ModelConfig))


def cli(argv: Optional[list[str]] = None):
    argv = sys.argv[1:] if argv is None else list(argv)
    # the Trainer's logs stay; datasets' bars and known deprecations (some raised while parsing) go, unless --verbose
    with quiet_libraries(verbose_requested(argv), trainer_logs=True):
        if "--dry_run" in argv or "--dry-run" in argv:  # no SFTConfig: its bf16 check would refuse a CPU-only machine
            script_args, model_args, _ = TrlParser((SailsScriptArguments, ModelConfig)).parse_args_and_config(
                argv, return_remaining_strings=True)
            return dry_run(script_args, model_args)
        return main(*make_parser().parse_args_and_config(argv))


if __name__ == "__main__":
    cli()
