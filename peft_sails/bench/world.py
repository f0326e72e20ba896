"""The benchmark's world, built once and cached: corpus, a trained word-level tokenizer, a Llama pre-trained from
scratch to comply with harmful requests and answer benign ones, and TopK SAEs on its residual stream saved into
the local Hugging Face cache (loaded back through `SAE.from_pretrained`, as a Hub SAE would be)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import DatasetDict, load_from_disk
from huggingface_hub import constants as hub_constants
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import SFTConfig, SFTTrainer

from ..offline import (
    SPECIAL_TOKENS,
    chat_tokenizer,
    explained_variance,
    hub_cache_snapshot,
    save_sae_to_hub_cache,
    token_activations,
    train_topk_sae,
)
from ..quiet import training_progress
from ..sae_loading import load_sae
from .corpus import CorpusConfig, build_corpus, corpus_texts
from .evaluation import evaluate_splits

WORLD_VERSION = 1  # bump when the world's code changes what it builds


@dataclass(frozen=True)
class WorldConfig:
    """Everything that determines the world; its hash names the cache folder and the SAE repo."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    hidden_size: int = 288
    intermediate_size: int = 576
    num_layers: int = 4
    num_heads: int = 4
    pretrain_steps: int = 600
    pretrain_lr: float = 2e-3
    pretrain_batch_size: int = 32
    sae_layers: tuple[int, ...] = (1, 2)
    d_sae: int = 2048
    sae_k: int = 16
    sae_epochs: int = 4
    sae_dead_window: int = 1000  # steps a latent may stay silent before sae-lens' AuxK loss revives it
    seed: int = 0
    device: str = "cpu"  # where the world is built: a world built on another device is another world

    def key(self) -> str:
        fields = asdict(self)
        for path, default in ADDED_AT_DEFAULT.items():  # fields added after version 1 keep the old worlds' keys
            *parents, name = path.split(".")
            node = fields
            for parent in parents:
                node = node[parent]
            if node.get(name, default) == default:
                node.pop(name, None)
        payload = json.dumps({"version": WORLD_VERSION, **fields}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def sae_spec(self) -> "SAESpec":
        return SAESpec(self.d_sae, self.sae_k, self.sae_epochs, self.sae_dead_window)


ADDED_AT_DEFAULT = {"sae_dead_window": 1000, "device": "cpu", "corpus.preset": "default"}


@dataclass(frozen=True)
class SAESpec:
    """How the SAEs of a world are trained (TopK, with sae-lens' `SAETrainer`)."""

    d_sae: int
    k: int
    epochs: int
    dead_window: int

    def name(self) -> str:
        return f"{self.d_sae}x{self.k}-e{self.epochs}-w{self.dead_window}"


@dataclass
class World:
    """A built world on disk, and what was measured while building it."""

    config: WorldConfig
    root: Path
    sae_repo: str
    sae_ids: dict[int, str]
    stats: dict

    @property
    def model_dir(self) -> Path:  # its name is the model name the SAEs were trained on (checked when loading them)
        return self.root / f"base-{self.config.key()}"

    def corpus(self) -> DatasetDict:
        return load_from_disk(str(self.root / "corpus"))

    def tokenizer(self) -> PreTrainedTokenizerFast:
        return PreTrainedTokenizerFast.from_pretrained(str(self.model_dir))

    def model(self) -> LlamaForCausalLM:
        return AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=torch.float32).to(self.config.device)

    def sae_variant(self, spec: SAESpec) -> tuple[str, dict[int, str]]:
        """(repo, {layer: sae_id}) of SAEs trained like `spec` on this world's model; trained once, then cached in
        the Hugging Face cache beside the world's own SAEs (their quality goes to `sae_variants.json`)."""
        if spec == self.config.sae_spec():
            return self.sae_repo, self.sae_ids
        repo = f"{self.sae_repo}-sae-{spec.name()}"
        if not _saes_cached(repo, self.sae_ids):
            quality = train_saes(self.model(), self.tokenizer(), self.corpus(), self.config, repo, self.sae_ids, spec,
                                 desc=f"world: training SAEs {spec.name()}")
            path = self.root / "sae_variants.json"
            known = json.loads(path.read_text()) if path.exists() else {}
            known[spec.name()] = quality
            path.write_text(json.dumps(known, indent=2))
        return repo, self.sae_ids

    def sae_variant_quality(self) -> dict:
        path = self.root / "sae_variants.json"
        return json.loads(path.read_text()) if path.exists() else {}


def train_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained with `tokenizers` on `texts`, with the offline chat template."""
    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=1))
    return chat_tokenizer(core)


def sae_quality(sae, activations: torch.Tensor) -> dict[str, float]:
    """Explained variance, mean L0 and share of dead latents (never firing) on `[n, d]` activations."""
    with torch.no_grad():
        codes = sae.encode(activations)
    fired = (codes != 0)
    return {"explained_variance": round(explained_variance(sae, activations), 4),
            "l0": round(float(fired.sum(1).float().mean()), 2),
            "dead_share": round(float((~fired.any(0)).float().mean()), 4)}


def _saes_cached(repo: str, sae_ids: dict[int, str]) -> bool:
    return all((hub_cache_snapshot(repo, hub_constants.HF_HUB_CACHE) / i / "cfg.json").exists() for i in sae_ids.values())


def train_saes(model, tokenizer, corpus: DatasetDict, cfg: WorldConfig, repo: str, sae_ids: dict[int, str],
               spec: SAESpec, desc: str = "world: training the SAEs") -> dict[int, dict]:
    """Train one SAE per layer on the residual stream of `model` over the pre-training texts, save them into the
    local Hugging Face cache as `repo`, and return their quality on those activations."""
    texts = corpus["pretrain"].shuffle(seed=cfg.seed).select_columns(["messages"])
    quality = {}
    for layer, sae_id in tqdm(sae_ids.items(), desc=desc, unit="SAE"):
        acts = token_activations(model, tokenizer, texts, layer, cfg.device)
        sae = train_topk_sae(acts, sae_id, model.config._name_or_path, d_sae=spec.d_sae, k=spec.k, epochs=spec.epochs,
                             seed=cfg.seed, dead_feature_window=spec.dead_window)
        save_sae_to_hub_cache(sae, repo, sae_id, hub_constants.HF_HUB_CACHE)
        quality[layer] = {"n_tokens": acts.shape[0], **sae_quality(load_sae(repo, sae_id, device=cfg.device), acts)}
    return quality


def _pretrain(model, tokenizer, corpus: DatasetDict, cfg: WorldConfig, out: Path) -> None:
    args = SFTConfig(output_dir=str(out / "pretrain-run"), max_steps=cfg.pretrain_steps,
                     per_device_train_batch_size=cfg.pretrain_batch_size, learning_rate=cfg.pretrain_lr,
                     lr_scheduler_type="cosine", warmup_steps=max(cfg.pretrain_steps // 20, 1),
                     logging_steps=max(cfg.pretrain_steps // 10, 1), bf16=False, report_to=[], save_strategy="no",
                     seed=cfg.seed, use_cpu=cfg.device == "cpu", gradient_checkpointing=False)
    data = corpus["pretrain"].select_columns(["messages"]).shuffle(seed=cfg.seed)
    SFTTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=data,
               callbacks=[training_progress("world: pre-training the base model")]).train()


def build_world(cfg: WorldConfig, cache_dir: str | Path, rebuild: bool = False) -> World:
    """The world for `cfg`: loaded from `cache_dir/<hash>` when it was built before, else built there (minutes)."""
    root = Path(cache_dir).expanduser() / cfg.key()
    sae_repo = f"peft-sails-bench/world-{cfg.key()}"
    sae_ids = {layer: f"blocks.{layer}.hook_resid_post" for layer in cfg.sae_layers}
    manifest = root / "world.json"
    if manifest.exists() and _saes_cached(sae_repo, sae_ids) and not rebuild:
        return World(cfg, root, sae_repo, sae_ids, json.loads(manifest.read_text())["stats"])
    root.mkdir(parents=True, exist_ok=True)
    seconds, tick = {}, time.perf_counter()
    corpus = build_corpus(cfg.corpus)
    corpus.save_to_disk(str(root / "corpus"))
    tokenizer = train_tokenizer(corpus_texts(corpus))
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads, max_position_embeddings=128,
        tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, vocab_size=len(tokenizer)))
    # a turn ends with <|end|>: generation stops there (and at <eos>)
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id]
    _pretrain(model.to(cfg.device), tokenizer, corpus, cfg, root)
    world = World(cfg, root, sae_repo, sae_ids, {})
    model.config._name_or_path = f"peft-sails-bench/{world.model_dir.name}"
    model.save_pretrained(str(world.model_dir))
    tokenizer.save_pretrained(str(world.model_dir))
    seconds["pretrain"] = round(time.perf_counter() - tick, 1)

    tick = time.perf_counter()
    base_eval = evaluate_splits(model, tokenizer, corpus)
    seconds["base_eval"] = round(time.perf_counter() - tick, 1)

    tick = time.perf_counter()
    quality = train_saes(model, tokenizer, corpus, cfg, sae_repo, sae_ids, cfg.sae_spec())
    seconds["saes"] = round(time.perf_counter() - tick, 1)
    n_params = sum(p.numel() for p in model.parameters())
    stats = {"n_params": n_params, "base": base_eval, "sae": quality, "seconds": seconds,
             "vocab_size": len(tokenizer), "corpus_rows": {k: len(v) for k, v in corpus.items()}}
    manifest.write_text(json.dumps({"config": asdict(cfg), "stats": stats}, indent=2))
    world.stats = stats
    return world
