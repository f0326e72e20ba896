"""Build the offline world on disk: a tiny base model that complies with harmful requests, TopK SAEs on its
residual stream in the local Hugging Face cache, and data in the columns of the public sets.

    HF_HUB_OFFLINE=1 peft-sails offline-world --output_dir sails-offline

Afterwards `trl_recipes/tiny-offline.yaml` runs against it exactly as the real recipes run against the Hub.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import concatenate_datasets
from huggingface_hub import constants as hub_constants
from transformers import HfArgumentParser
from tqdm.auto import tqdm
from trl import SFTConfig, SFTTrainer

from .offline import (
    build_tokenizer,
    echo_data,
    explained_variance,
    save_sae_to_hub_cache,
    tiny_llama,
    toy_benign,
    toy_pairs,
    toy_safety_data,
    token_activations,
    train_topk_sae,
)
from .quiet import quiet_libraries, training_progress
from .sae_loading import load_sae


@dataclass
class WorldArguments:
    output_dir: str = field(default="sails-offline", metadata={"help": "Folder for the model and the data."})
    sae_repo: str = field(default="peft-sails-local/tiny-llama-saes",
                          metadata={"help": "Repo id the SAEs get in the local Hugging Face cache."})
    hidden_size: int = field(default=64, metadata={"help": "Width of the tiny Llama."})
    layers: list[int] = field(default_factory=lambda: [1, 2], metadata={"help": "Layers that get an SAE."})
    d_sae: int = field(default=512, metadata={"help": "SAE width."})
    n_train: int = field(default=256, metadata={"help": "Rows of each toy dataset."})
    base_steps: int = field(default=300, metadata={"help": "Steps that teach the base model to comply."})
    seed: int = field(default=0, metadata={"help": "Seed for data, model and SAEs."})
    verbose: bool = field(default=False, metadata={
        "help": "Show the libraries' own progress bars, logs and deprecation warnings (hidden by default)."})


@dataclass
class OfflineWorld:
    """Where everything went, and how good the SAEs are."""

    model_dir: str
    harmful_dir: str  # train.jsonl with prompt / chosen (refusal) / rejected (compliance) / category
    benign_dir: str  # train.jsonl with prompt / response
    sae_repo: str
    sae_ids: dict[int, str]
    sae_explained_variance: dict[int, float]
    seconds: dict[str, float]


def sft_args(output_dir: Path, steps: int, lr: float, seed: int) -> SFTConfig:
    return SFTConfig(output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=16, learning_rate=lr,
                     lr_scheduler_type="cosine", logging_steps=max(steps // 4, 1), bf16=False, report_to=[],
                     save_strategy="no", seed=seed, use_cpu=True, gradient_checkpointing=False)


def build_offline_world(args: WorldArguments) -> OfflineWorld:
    """Train the base model (full fine-tuning with TRL on compliance, benign answers and 'repeat after me' chats,
    so it knows refusal words but never refuses), train one TopK SAE per layer, and write everything to disk."""
    out = Path(args.output_dir)
    seconds, tick = {}, time.perf_counter()
    tokenizer = build_tokenizer()
    aligned, unaligned, benign = toy_safety_data(args.n_train, args.seed)

    model = tiny_llama(tokenizer, hidden_size=args.hidden_size, seed=args.seed)
    base_data = concatenate_datasets([unaligned, benign, echo_data(args.n_train, args.seed)]).shuffle(seed=args.seed)
    SFTTrainer(model=model, args=sft_args(out / "base-run", args.base_steps, 3e-3, args.seed),
               processing_class=tokenizer, train_dataset=base_data,
               callbacks=[training_progress("training the base model")]).train()
    model_dir = out / "tiny-llama"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    toy_pairs(args.n_train, args.seed).to_json(out / "harmful" / "train.jsonl")
    toy_benign(args.n_train, args.seed).to_json(out / "benign" / "train.jsonl")
    seconds["base_model"] = round(time.perf_counter() - tick, 1)

    tick = time.perf_counter()
    corpus = concatenate_datasets([aligned, unaligned, benign])
    sae_ids, quality = {}, {}
    for layer in tqdm(args.layers, desc="training the SAEs", unit="SAE"):
        acts = token_activations(model, tokenizer, corpus, layer)
        sae = train_topk_sae(acts, f"blocks.{layer}.hook_resid_post", "tiny-llama", d_sae=args.d_sae, seed=args.seed)
        sae_ids[layer] = f"layer_{layer}"
        save_sae_to_hub_cache(sae, args.sae_repo, sae_ids[layer], hub_constants.HF_HUB_CACHE)
        quality[layer] = round(explained_variance(load_sae(args.sae_repo, sae_ids[layer]), acts), 3)
    seconds["saes"] = round(time.perf_counter() - tick, 1)

    world = OfflineWorld(str(model_dir), str(out / "harmful"), str(out / "benign"), args.sae_repo, sae_ids, quality,
                         seconds)
    (out / "world.json").write_text(json.dumps(asdict(world), indent=2))
    return world


def cli(argv: list[str] | None = None) -> None:
    (args,) = HfArgumentParser(WorldArguments, description=__doc__.split("\n")[0]).parse_args_into_dataclasses(argv)
    with quiet_libraries(args.verbose):
        world = build_offline_world(args)
    print(json.dumps(asdict(world), indent=2))
    print(f"Files: {args.output_dir}/ (tiny-llama/, harmful/, benign/, world.json); SAEs in the Hugging Face cache "
          f"as {args.sae_repo} ({hub_constants.HF_HUB_CACHE})")
