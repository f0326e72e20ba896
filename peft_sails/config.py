"""`SAILSConfig`: a `LoraConfig` whose adapters start inside an SAE-built subspace."""

from __future__ import annotations

import copy
import json
import os
import tempfile
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional

from peft import LoraConfig
from peft.utils import CONFIG_NAME

from .sidecar import SIDECAR_NAME, atomic_write_text, read_sidecar, write_sidecar

SAILS_PEFT_TYPE = "SAILS"
TOKEN_SCOPES = ("response", "all", "prompt", "last_prompt")
WRITER_INITS = ("basis", "lora")
NORM_MAPPINGS = ("residual", "image", "none")
_LEGACY_NORM_MAPPING = {True: "image", False: "none"}  # sidecars written before norm_mapping had named rules
SUBSPACE_FILLS = ("pca", "random")
DEFAULT_READERS = ["q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"]
DEFAULT_WRITERS = ["o_proj", "down_proj"]


def _int_keys(mapping: Optional[dict], name: str) -> Optional[dict]:
    """JSON turns int keys into strings: turn them back, and say which key is not a layer index."""
    if mapping is None:
        return None
    out = {}
    for key, value in mapping.items():
        try:
            out[int(key)] = value
        except (TypeError, ValueError):
            raise ValueError(f"`{name}` keys must be layer indices (int), got {key!r}.") from None
    return out


def _lora_kwargs(config: LoraConfig, init_lora_weights: Any) -> dict[str, Any]:
    """The LoraConfig fields of `config` (copied), with another init."""
    kwargs = {f.name: copy.deepcopy(getattr(config, f.name)) for f in fields(LoraConfig) if f.init}
    kwargs.pop("peft_type", None)
    return {**kwargs, "init_lora_weights": init_lora_weights}


def _fingerprint(config: LoraConfig) -> dict[str, Any]:
    """What ties a sidecar to the adapter_config.json beside it (checked when loading)."""
    return {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules or []),
            "base_model_name_or_path": config.base_model_name_or_path}


@dataclass
class SAILSConfig(LoraConfig):
    """LoRA initialised in a subspace built from SAE decoder directions (SAILS, arXiv 2512.23260).

    Stage 1 (`select_features`) stores the chosen SAE features in `features`; stage 2 and 3 run inside
    `get_peft_model`: the selected decoder rows of every layer in `sae_ids` are stacked, PCA keeps
    `variance_threshold` of their variance, QR gives an orthonormal basis, and the adapters start in it with
    the model unchanged at step 0. Saved adapters are plain LoRA plus a `sails_config.json` sidecar.

    Two-sided subspace (experimental): with `reader_features` (from `select_reader_features`: harmful vs benign
    requests at `reader_token_scope`), readers start in the basis of those features and writers in that of
    `features`; None keeps the paper's single basis.
    """

    init_lora_weights: Any = field(
        default="sails",  # LoRA's field metadata (lora_variants) is kept: peft's layers read it
        metadata={**LoraConfig.__dataclass_fields__["init_lora_weights"].metadata, "help": "Must be 'sails'."},
    )
    sae_release: Optional[str] = field(
        default=None,
        metadata={
            "help": "sae-lens release (e.g. 'gemma-scope-2b-pt-res-canonical'), any Hub repo id holding sae-lens "
            "SAEs in sub-folders, or a local directory."
        },
    )
    sae_ids: Optional[dict[int, str]] = field(
        default=None,
        metadata={"help": "Layer index -> SAE id in the release, e.g. {5: 'layer_5/width_16k/canonical'}."},
    )
    features: Optional[dict[int, list[dict[str, float]]]] = field(
        default=None,
        metadata={
            "help": "Written by `select_features`: layer -> [{'id', 'delta', 'rho'}, ...] sorted by rho, descending."
        },
    )
    reader_features: Optional[dict[int, list[dict[str, float]]]] = field(
        default=None,
        metadata={
            "help": "Two-sided subspace (experimental). Written by `select_reader_features`: layer -> [{'id', "
            "'delta', 'rho'}, ...] as in `features`, contrasting harmful with benign requests over "
            "`reader_token_scope` tokens. Set: readers (reader_modules) start in the basis of these features and "
            "writers in that of `features`. None (default): one basis from `features` for both (the paper's method)."
        },
    )
    reader_token_scope: Literal["response", "all", "prompt", "last_prompt"] = field(
        default="last_prompt",
        metadata={
            "help": "Tokens `select_reader_features` averages (as `token_scope`): default 'last_prompt', the last "
            "prompt token, where the model decides whether to refuse."
        },
    )
    sae_fit: Optional[dict[int, dict[str, float]]] = field(
        default=None,
        metadata={
            "help": "Written by `select_features`: layer -> {'explained_variance', 'l0', 'n_tokens'} of the SAE on "
            "this model's activations at the scored tokens of the selection data: explained variance over the first "
            "16 batches of each side (n_tokens tokens in all), L0 over every scored token."
        },
    )
    min_explained_variance: float = field(
        default=0.5,
        metadata={
            "help": "Selection warns when an SAE explains less than this share of the variance of the model's own "
            "activations: a sign that it was trained on another model, layer or hook."
        },
    )
    top_k: int = field(default=64, metadata={"help": "Features kept per layer (stage 1)."})
    variance_threshold: float = field(
        default=0.8, metadata={"help": "Share of the stacked decoder rows' variance the basis keeps, in (0, 1]."}
    )
    min_firing_rate: float = field(
        default=0.0,
        metadata={
            "help": "A feature is eligible only if it fires on at least this share of scored tokens on one side. "
            "Features silent on one side all have rho = 1; this keeps rare ones out of the top-k."
        },
    )
    token_scope: Literal["response", "all", "prompt", "last_prompt"] = field(
        default="response",
        metadata={
            "help": "Tokens whose activations are averaged: 'response' (assistant tokens, default), 'all', "
            "'prompt', or 'last_prompt' (the last prompt token, where the model decides how to answer)."
        },
    )
    norm_mapping: Literal["residual", "image", "none"] = field(
        default="residual",
        metadata={
            "help": "How the residual-stream basis U passes the RMSNorm (scale s = w, or 1 + w in Gemma) in front of "
            "a reader, which sees s * h / rms(h). 'residual' (default): lora_A rows span U / s, so the adapter "
            "reads exactly the residual-stream directions U. 'image': rows span s * U (the image of U behind the "
            "norm; reads s^2 * U; the rule of peft-sails 0.1). 'none': rows span U (reads s * U). Writers behind a "
            "post-norm (Gemma-2) get U / s except with 'none'."
        },
    )
    writer_init: Literal["basis", "lora"] = field(
        default="basis",
        metadata={
            "help": "Modules that write to the residual stream: 'basis' puts the basis in lora_B's columns with "
            "lora_A = 0; 'lora' keeps PEFT's default init for them."
        },
    )
    subspace_fill: Literal["pca", "random"] = field(
        default="pca",
        metadata={
            "help": "When the variance threshold gives fewer than r directions: 'pca' adds the next principal "
            "components of the same features, 'random' adds seeded random directions orthogonal to the basis."
        },
    )
    a_scale: Optional[float] = field(
        default=None,
        metadata={
            "help": "Norm of each basis vector in the adapter. None matches PEFT's default LoRA init "
            "(expected row norm 1/sqrt(3) for kaiming-uniform lora_A), so the usual learning rates apply."
        },
    )
    reader_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_READERS),
        metadata={"help": "Module names whose input is the (normed) residual stream: they get the basis in lora_A."},
    )
    writer_modules: list[str] = field(
        default_factory=lambda: list(DEFAULT_WRITERS),
        metadata={"help": "Module names whose output is added to the residual stream."},
    )
    check_sae_model: bool = field(
        default=True,
        metadata={"help": "Refuse an SAE whose metadata names another model than the one being adapted."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for the 'random' subspace fill."})
    # Selection data named in the config, so that `get_peft_model` can run stage 1 itself.
    aligned_dataset: Optional[str] = field(
        default=None, metadata={"help": "Dataset id or local path of aligned data (harmful request + refusal)."}
    )
    unaligned_dataset: Optional[str] = field(
        default=None, metadata={"help": "Dataset id or local path of unaligned data (harmful request + compliance)."}
    )
    benign_dataset: Optional[str] = field(
        default=None,
        metadata={
            "help": "Dataset id or local path of benign requests (chat or prompt/completion, any response): set, "
            "`get_peft_model` also selects `reader_features`, contrasting the harmful requests of `aligned_dataset` "
            "with these (two-sided subspace, experimental)."
        },
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of the selection datasets."})
    messages_column: str = field(default="messages", metadata={"help": "Column with chat messages."})
    prompt_column: str = field(default="prompt", metadata={"help": "Prompt column (prompt/completion format)."})
    completion_column: str = field(default="completion", metadata={"help": "Completion column."})
    tokenizer_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer for selection; defaults to the model's `name_or_path`."}
    )
    selection_batch_size: int = field(default=8, metadata={"help": "Batch size of the selection forward passes."})
    shard_selection: bool = field(
        default=True,
        metadata={
            "help": "Under torch.distributed (e.g. `accelerate launch`), each process scores only its share of the "
            "selection batches and the sums are gathered: every process must call select_features, and all end "
            "with the features of a single-process run, bit for bit. False: each process scores all the data."
        },
    )
    saes_per_pass: Optional[int] = field(
        default=None,
        metadata={
            "help": "SAEs held in memory at once during selection; each pass runs the data up to the deepest of "
            "its layers. None (default): as many consecutive layers' SAE encoders as fit in half the memory "
            "available on the model's device (free GPU memory, or the system's available RAM), at least one; the "
            "same on every process. 1: one SAE at a time (least memory, one pass per layer); len(sae_ids): one pass."
        },
    )
    max_length: int = field(default=512, metadata={"help": "Examples are truncated to this many tokens."})
    max_selection_samples: Optional[int] = field(
        default=None, metadata={"help": "Use at most this many rows of each selection dataset."}
    )
    subspace_stats: Optional[dict[str, Any]] = field(
        default=None, metadata={"help": "Written at initialisation: basis size and variance kept, per layer and overall."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = SAILS_PEFT_TYPE
        if self.init_lora_weights != "sails":
            raise ValueError(
                f"SAILSConfig needs init_lora_weights='sails', got {self.init_lora_weights!r}; "
                "use peft.LoraConfig for other initialisations."
            )
        if not self.sae_release:
            raise ValueError("`sae_release` is required: a sae-lens release, a Hub repo id or a local directory.")
        self.sae_ids = _int_keys(self.sae_ids, "sae_ids")
        if not self.sae_ids:
            raise ValueError("`sae_ids` must map at least one layer to an SAE id, e.g. {5: 'layer_5/width_16k/canonical'}.")
        self.features = _int_keys(self.features, "features")
        self.reader_features = _int_keys(self.reader_features, "reader_features")
        self.sae_fit = _int_keys(self.sae_fit, "sae_fit")
        for name in ("features", "reader_features"):
            extra = sorted(set(getattr(self, name) or ()) - set(self.sae_ids))
            if extra:
                raise ValueError(f"`{name}` has layers {extra} that are not in `sae_ids` {sorted(self.sae_ids)}: "
                                 f"add an SAE id for each of them to `sae_ids`, or select `{name}` again.")
        if not isinstance(self.top_k, int) or self.top_k <= 0:
            raise ValueError(f"`top_k` must be a positive integer, got {self.top_k!r}.")
        if not 0.0 < float(self.variance_threshold) <= 1.0:
            raise ValueError(f"`variance_threshold` must be in (0, 1], got {self.variance_threshold!r}.")
        if not 0.0 <= float(self.min_firing_rate) <= 1.0:
            raise ValueError(f"`min_firing_rate` must be in [0, 1], got {self.min_firing_rate!r}.")
        if isinstance(self.norm_mapping, bool):
            self.norm_mapping = _LEGACY_NORM_MAPPING[self.norm_mapping]
        for name, value, allowed in (
            ("token_scope", self.token_scope, TOKEN_SCOPES),
            ("reader_token_scope", self.reader_token_scope, TOKEN_SCOPES),
            ("norm_mapping", self.norm_mapping, NORM_MAPPINGS),
            ("writer_init", self.writer_init, WRITER_INITS),
            ("subspace_fill", self.subspace_fill, SUBSPACE_FILLS),
        ):
            if value not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")
        if self.a_scale is not None and not self.a_scale > 0:
            raise ValueError(f"`a_scale` must be positive (or None for LoRA's scale), got {self.a_scale!r}.")
        if self.selection_batch_size <= 0 or self.max_length <= 0 or (self.saes_per_pass or 1) <= 0:
            raise ValueError("`selection_batch_size`, `max_length` and `saes_per_pass` must be positive "
                             f"(saes_per_pass=None chooses from memory), got {self.selection_batch_size}, "
                             f"{self.max_length}, {self.saes_per_pass}.")
        if (self.aligned_dataset is None) != (self.unaligned_dataset is None):
            raise ValueError("Name both `aligned_dataset` and `unaligned_dataset`, or neither.")
        if self.benign_dataset is not None and self.aligned_dataset is None:
            raise ValueError(
                "`benign_dataset` needs `aligned_dataset` (and `unaligned_dataset`): two-sided selection contrasts the "
                "harmful requests of `aligned_dataset` with the benign ones. Name all three, or drop `benign_dataset`."
            )

    @property
    def layers(self) -> list[int]:
        return sorted(self.sae_ids)

    def stock_lora_config(self) -> LoraConfig:
        """The plain `LoraConfig` this adapter is saved as (default init, no SAILS fields)."""
        return LoraConfig(**_lora_kwargs(self, init_lora_weights=True))

    def sails_dict(self) -> dict[str, Any]:
        """The SAILS-specific fields (everything a plain LoraConfig lacks)."""
        lora_names = {f.name for f in fields(LoraConfig)}
        out = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name not in lora_names}
        return json.loads(json.dumps(out))  # int keys -> str, as on disk

    def save_pretrained(self, save_directory: str, **kwargs) -> None:
        """Write a plain-LoRA `adapter_config.json` (loads without peft_sails), the `sails_config.json` sidecar and
        the model card (`README.md`, replacing the generic one PEFT wrote just before)."""
        from .card import build_card  # card.py needs this module

        card = str(build_card(save_directory, config=self))  # rendered first: a failure here writes nothing
        os.makedirs(save_directory, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=save_directory, prefix=".tmp-") as tmp:
            self.stock_lora_config().save_pretrained(tmp, **kwargs)
            os.replace(os.path.join(tmp, CONFIG_NAME), os.path.join(save_directory, CONFIG_NAME))
        write_sidecar(os.path.join(save_directory, SIDECAR_NAME), self.sails_dict(), _fingerprint(self))
        atomic_write_text(os.path.join(save_directory, "README.md"), card)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: Optional[str] = None, **kwargs):
        """Load the full SAILS config of a saved adapter (local directory or Hub repo): LoRA fields + sidecar."""
        lora = LoraConfig.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        sails = read_sidecar(pretrained_model_name_or_path, subfolder=subfolder, expected_adapter=_fingerprint(lora),
                             **kwargs)
        return cls(**_lora_kwargs(lora, init_lora_weights="sails"), **sails)
