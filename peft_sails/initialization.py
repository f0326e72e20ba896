"""Stage 3: write the SAILS basis into the LoRA adapters (the model is unchanged at step 0)."""

from __future__ import annotations

import copy
import logging
import math
import re
from typing import Literal, Optional

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTuner
from torch import nn
from tqdm.auto import tqdm

from .config import SAILSConfig
from .residual import check_not_partitioned, decoder_layers, model_device
from .sae_files import load_sae_parts
from .sae_loading import check_sae_fits
from .subspace import Subspace, principal_directions, build_subspace, directions_for_variance, orthonormalize_rows

logger = logging.getLogger(__name__)

LORA_ROW_NORM = 1 / math.sqrt(3)  # expected row norm of PEFT's kaiming-uniform(a=sqrt(5)) lora_A
LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.([^.]+)\.")
_ATTENTION_BLOCKS = ("self_attn", "attn", "attention")
Role = Literal["reader", "writer"]


def decoder_rows_of_features(
    model: nn.Module, config: SAILSConfig, show_progress: bool = True
) -> tuple[dict[int, torch.Tensor], dict[int, dict]]:
    """Load each layer's SAE in turn, check it fits `model`, keep only the selected decoder rows (float32, CPU):
    of a format `sae_files` reads in parts, only those rows are read from disk.

    Returns the rows per layer and each SAE's metadata (hook, width, Neuronpedia id) for the model card.
    """
    rows, info = {}, {}
    for layer in tqdm(config.layers, desc="SAILS subspace: loading SAEs", disable=not show_progress):
        ids = [f["id"] for f in config.features.get(layer, [])]
        if not ids:
            continue
        sae, decoder_rows = load_sae_parts(config.sae_release, config.sae_ids[layer], encoder=False)
        check_sae_fits(sae, model, layer, config.check_sae_model)
        if max(ids) >= sae.cfg.d_sae:
            raise ValueError(
                f"Feature id {max(ids)} at layer {layer} does not exist: the SAE has d_sae={sae.cfg.d_sae}. "
                "The features were selected with another SAE; run select_features again."
            )
        rows[layer] = decoder_rows(ids).clone()
        meta = sae.cfg.metadata
        info[layer] = {"hook_name": meta.hook_name, "d_sae": sae.cfg.d_sae, "neuronpedia_id": meta.neuronpedia_id}
        del sae
    if not rows:
        raise ValueError("`features` selects no feature in any layer; run select_features first.")
    return rows, info


def module_role(name: str, config: SAILSConfig) -> Optional[Role]:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in config.reader_modules:
        return "reader"
    if leaf in config.writer_modules:
        return "writer"
    return None


def norm_scale(block: nn.Module, sub_block: str, role: Role, hidden: int) -> Optional[torch.Tensor]:
    """Elementwise scale `s` of the RMSNorm in front of a reader (or behind a writer, Gemma-2 style); None if none.

    A reader sees `s * h / rms(h)`; a writer's output `v` reaches the residual stream as `s * v / rms(v)`."""
    sandwich = hasattr(block, "pre_feedforward_layernorm")  # Gemma-2: norms before and after each sub-block
    attention = sub_block in _ATTENTION_BLOCKS
    if role == "reader":
        name = "input_layernorm" if attention else ("pre_feedforward_layernorm" if sandwich else "post_attention_layernorm")
    elif sandwich:
        name = "post_attention_layernorm" if attention else "post_feedforward_layernorm"
    else:
        return None
    norm = getattr(block, name, None)
    if norm is None or "RMSNorm" not in type(norm).__name__:
        raise ValueError(
            f"norm_mapping needs the RMSNorm '{name}' of {type(block).__name__}, found "
            f"{type(norm).__name__ if norm is not None else 'nothing'}; set norm_mapping='none' for this architecture."
        )
    weight = next(norm.parameters())
    probe = torch.ones(1, 1, hidden, dtype=weight.dtype, device=weight.device)
    return norm(probe).float().flatten().cpu()  # = weight (Llama) or 1 + weight (Gemma), up to 1/sqrt(1 + eps)


def _inverse(scale: torch.Tensor) -> torch.Tensor:
    """1 / scale, with |scale| kept above 1e-3 of its largest entry (sign kept) so a dead channel stays finite."""
    sign = torch.where(scale < 0, -1.0, 1.0)
    return 1 / (sign * scale.abs().clamp_min(1e-3 * scale.abs().max()))


def _mapped_basis(basis: torch.Tensor, scale: Optional[torch.Tensor], role: Role, rule: str) -> torch.Tensor:
    """Rows spanning what a module must hold so that, through its norm, it reads (writes) the rows of `basis`."""
    if scale is None or rule == "none":
        return basis
    factor = scale if role == "reader" and rule == "image" else _inverse(scale)
    return orthonormalize_rows(basis.double() * factor.double()).float()


def module_norm_scale(blocks: nn.ModuleList, name: str, role: Role, hidden: int) -> Optional[torch.Tensor]:
    """`norm_scale` of the RMSNorm between module `name` (e.g. "model.layers.3.mlp.up_proj") and the residual
    stream; None when the name has no layer index or no norm stands there."""
    match = LAYER_INDEX.search(name)
    return norm_scale(blocks[int(match.group(1))], match.group(2), role, hidden) if match else None


def residual_factor(blocks: nn.ModuleList, name: str, role: Role, factor: torch.Tensor) -> torch.Tensor:
    """A module's learned factor in residual-stream coordinates: the rows of `lora_A · diag(s)` for a reader (the
    residual directions it reads), the columns of `diag(s) · lora_B` (given as rows) for a writer behind a
    post-norm; unchanged where no norm stands between the module and the residual stream."""
    scale = module_norm_scale(blocks, name, role, factor.shape[1])
    return factor if scale is None else factor * scale.to(factor)


def base_model_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a PeftModel / LoraModel (or the model itself)."""
    model = getattr(model, "module", model)  # DistributedDataParallel and friends
    if isinstance(model, PeftModel):
        return model.get_base_model()
    return model.model if isinstance(model, BaseTuner) else model


def compute_sails_subspace(model: nn.Module, config: SAILSConfig, show_progress: bool = True) -> tuple[Subspace, dict]:
    """Stage 2 from `config.features`: the basis, and statistics to store in `config.subspace_stats`."""
    rows, info = decoder_rows_of_features(model, config, show_progress)
    ranks = [config.r, *config.rank_pattern.values()] if config.rank_pattern else [config.r]
    subspace = build_subspace(torch.cat(list(rows.values())), config.variance_threshold, max(ranks),
                              fill=config.subspace_fill, seed=config.seed)
    per_layer = {
        str(layer): {
            "n_features": int(r.shape[0]),
            "n_directions_at_threshold": directions_for_variance(principal_directions(r)[1], config.variance_threshold),
            **info[layer],
        }
        for layer, r in rows.items()
    }
    stats = {
        "subspace_dim": int(subspace.basis.shape[0]),
        "n_directions_at_threshold": subspace.n_threshold,
        "n_principal_rows": subspace.n_pca,
        "n_random_rows": subspace.n_random,
        "variance_kept": subspace.variance_kept,
        "per_layer": per_layer,
    }
    return subspace, stats


def module_basis(blocks: nn.ModuleList, name: str, role: Role, basis: torch.Tensor, config: SAILSConfig) -> torch.Tensor:
    """The orthonormal rows SAILS writes into module `name` (before `a_scale`): `basis`, mapped through the
    RMSNorm in front of a reader (or behind a writer, Gemma-2 style) by the rule `config.norm_mapping`."""
    norm = module_norm_scale(blocks, name, role, basis.shape[1]) if config.norm_mapping != "none" else None
    return _mapped_basis(basis, norm, role, config.norm_mapping)


@torch.no_grad()
def write_sails_weights(model: nn.Module, adapter_name: str, config: SAILSConfig, subspace: Subspace) -> dict[str, int]:
    """Write `subspace` into the LoRA weights of `adapter_name` (cheap: no SAE is loaded); see
    `initialize_sails_weights` for what each module gets. Returns how many modules of each kind were written."""
    base = base_model_of(model)
    hidden = base.config.hidden_size
    blocks = decoder_layers(base)
    scale = config.a_scale or LORA_ROW_NORM
    stock_config = copy.copy(config)
    stock_config.init_lora_weights = True
    counts = {"n_reader_modules": 0, "n_writer_modules": 0, "n_default_init": 0}
    default_init = []
    _check_whole(model, blocks, adapter_name, config)  # before anything is written
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer) or adapter_name not in module.lora_A:
            continue
        rank = module.r[adapter_name]
        if module.lora_A[adapter_name].weight.is_meta:
            module.update_layer(adapter_name, r=rank, lora_alpha=module.lora_alpha[adapter_name], config=stock_config)
        role = module_role(name, config)
        if role is None or (role == "writer" and config.writer_init == "lora"):
            default_init.append(name)
            continue
        lora_a, lora_b = module.lora_A[adapter_name].weight, module.lora_B[adapter_name].weight
        width = lora_a.shape[1] if role == "reader" else lora_b.shape[0]
        if width != hidden:
            raise ValueError(
                f"{name} is listed as a {role} of the residual stream but its {'input' if role == 'reader' else 'output'} "
                f"width is {width}, not hidden_size={hidden}; fix reader_modules/writer_modules."
            )
        vectors = module_basis(blocks, name, role, subspace.basis[:rank], config) * scale
        if role == "reader":
            lora_a.copy_(vectors.to(lora_a))
            lora_b.zero_()
        else:
            lora_b.copy_(vectors.T.to(lora_b))
            lora_a.zero_()
        counts[f"n_{role}_modules"] += 1
    counts["n_default_init"] = len(default_init)
    counts["n_adapter_params"] = sum(p.numel() for n, p in model.named_parameters() if f".{adapter_name}." in n and "lora_" in n)
    counts["n_base_params"] = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    if default_init and config.writer_init != "lora":
        logger.warning("SAILS: %d modules are neither readers nor writers and keep LoRA's default init: %s",
                       len(default_init), default_init[:8])
    return counts


def _check_whole(model: nn.Module, blocks: nn.ModuleList, adapter_name: str, config: SAILSConfig) -> None:
    """Every LoRA weight SAILS writes and every norm weight it reads is whole on this process (not a ZeRO-3 shard)."""
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and adapter_name in module.lora_A:
            for factor in (module.lora_A[adapter_name], module.lora_B[adapter_name]):
                check_not_partitioned(factor.weight, f"{name} LoRA weight")
    if config.norm_mapping != "none":
        for index, block in enumerate(blocks):
            for name, param in block.named_parameters():
                if "norm" in name:
                    check_not_partitioned(param, f"layers.{index}.{name}")


def initialize_sails_weights(
    model: nn.Module,
    adapter_name: str = "default",
    config: Optional[SAILSConfig] = None,
    show_progress: bool = True,
) -> Subspace:
    """Initialise the LoRA weights of `adapter_name` in the SAILS subspace, in place; return the subspace.

    Call it after `get_peft_model(model, config, low_cpu_mem_usage=True)` (weights left on the meta device are
    created here), or let `get_peft_model` call it. For each adapted module:

    - readers of the residual stream (`config.reader_modules`, e.g. q/k/v/gate/up): `lora_A` rows span the basis
      divided by the scale `s` of the module's input RMSNorm (`norm_mapping="residual"`), so that, as the module
      sees `s * h / rms(h)`, the adapter reads exactly the basis directions of the residual stream `h`; `lora_B` = 0;
    - writers (`config.writer_modules`, e.g. o/down) with `writer_init="basis"`: `lora_B` columns = basis (mapped
      through the inverse of a post-norm, as in Gemma-2), `lora_A` = 0; with `"lora"`: PEFT's default init;
    - other modules keep PEFT's default init (a warning lists them).

    Every basis vector has norm `config.a_scale` (default 1/sqrt(3), PEFT's expected row norm for lora_A), so
    the usual LoRA learning rates apply. Either `lora_A` or `lora_B` is zero, so outputs equal the base model's.
    Statistics (basis size, variance kept, per layer) go to `config.subspace_stats`.
    Memory: one SAE at a time, then only the selected decoder rows and an `[r, d_model]` basis.
    """
    config = config or getattr(model, "module", model).peft_config[adapter_name]  # through DDP-style wrappers
    if not config.features:
        raise ValueError("The SAILSConfig has no `features`: run peft_sails.select_features first.")
    subspace, stats = compute_sails_subspace(base_model_of(model), config, show_progress)
    apply_subspace(model, adapter_name, config, subspace, stats)
    return subspace


def apply_subspace(model: nn.Module, adapter_name: str, config: SAILSConfig, subspace: Subspace, stats: dict) -> None:
    """Write `subspace` into the adapter and record the statistics in `config.subspace_stats`."""
    config.subspace_stats = {**stats, **write_sails_weights(model, adapter_name, config, subspace)}
