"""Stage 3: write the SAILS basis into the LoRA adapters (the model is unchanged at step 0)."""

from __future__ import annotations

import copy
import logging
import math
import re
from typing import Literal, Optional

import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTuner
from torch import nn
from tqdm.auto import tqdm

from .config import SAILSConfig
from .residual import check_not_partitioned, decoder_layers, gathered, model_device
from .sae_files import load_sae_parts
from .sae_loading import check_sae_fits
from .subspace import Subspace, principal_directions, build_subspace, directions_for_variance, orthonormalize_rows

logger = logging.getLogger(__name__)

LORA_ROW_NORM = 1 / math.sqrt(3)  # expected row norm of PEFT's kaiming-uniform(a=sqrt(5)) lora_A
LAYER_INDEX = re.compile(r"\.layers\.(\d+)\.([^.]+)\.")
_ATTENTION_BLOCKS = ("self_attn", "attn", "attention")
Role = Literal["reader", "writer"]
_SELECTOR = {"features": "select_features", "reader_features": "select_reader_features"}  # stage 1 of each field


def decoder_rows_of_features(
    model: nn.Module, config: SAILSConfig, show_progress: bool = True, field: str = "features"
) -> tuple[dict[int, torch.Tensor], dict[int, dict]]:
    """Load each layer's SAE in turn, check it fits `model`, keep only the decoder rows of the features in
    `config.<field>` ("features" or "reader_features"; float32, CPU): of a format `sae_files` reads in parts, only
    those rows are read from disk.

    Returns the rows per layer and each SAE's metadata (hook, width, Neuronpedia id) for the model card.
    """
    rows, info = _decoder_rows_by_field(model, config, (field,), show_progress)
    return rows[field], info


def _decoder_rows_by_field(
    model: nn.Module, config: SAILSConfig, names: tuple[str, ...], show_progress: bool = True
) -> tuple[dict[str, dict[int, torch.Tensor]], dict[int, dict]]:
    """`decoder_rows_of_features` for several feature fields at once, each SAE loaded once for all of them."""
    model_device(model)  # a clear error if the weights are on the meta device
    rows: dict[str, dict[int, torch.Tensor]] = {name: {} for name in names}
    info = {}
    for layer in tqdm(config.layers, desc="SAILS subspace: loading SAEs", disable=not show_progress):
        ids = {name: [f["id"] for f in (getattr(config, name) or {}).get(layer, [])] for name in names}
        if not any(ids.values()):
            continue
        sae, decoder_rows = load_sae_parts(config.sae_release, config.sae_ids[layer], encoder=False)
        check_sae_fits(sae, model, layer, config.check_sae_model)
        for name, chosen in ids.items():
            if not chosen:
                continue
            if max(chosen) >= sae.cfg.d_sae:
                which = " of `reader_features`" if name == "reader_features" else ""
                raise ValueError(
                    f"Feature id {max(chosen)}{which} at layer {layer} does not exist: the SAE has "
                    f"d_sae={sae.cfg.d_sae}. The features were selected with another SAE; run {_SELECTOR[name]} again."
                )
            rows[name][layer] = decoder_rows(chosen).clone()
        meta = sae.cfg.metadata
        info[layer] = {"hook_name": meta.hook_name, "d_sae": sae.cfg.d_sae, "neuronpedia_id": meta.neuronpedia_id}
        del sae
    for name in names:
        if not rows[name]:
            raise ValueError(f"`{name}` selects no feature in any layer; run {_SELECTOR[name]} first.")
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
    """Stage 2 from `config.features`: the basis, and statistics to store in `config.subspace_stats`.

    Two-sided (`config.reader_features` set): the same stage 2 runs on the reader features too; the returned
    subspace is that of `features` (the writers') with the readers' own in `subspace.readers`, and the statistics
    keep the writers' at the top level, the readers' under "readers", and "reader_writer_overlap" =
    ||U_readers U_writers^T||_F^2 / r (1: the same subspace; about r / d_model for unrelated ones)."""
    names = ("features", "reader_features") if config.reader_features is not None else ("features",)
    rows, info = _decoder_rows_by_field(model, config, names, show_progress)
    ranks = [config.r, *config.rank_pattern.values()] if config.rank_pattern else [config.r]
    sides = {name: _side_subspace(rows[name], info, config, max(ranks)) for name in names}
    subspace, stats = sides["features"]
    if "reader_features" in sides:
        readers, reader_stats = sides["reader_features"]
        subspace.readers = readers
        overlap = (readers.basis.double() @ subspace.basis.double().T).square().sum() / subspace.basis.shape[0]
        stats = {**stats, "readers": reader_stats, "reader_writer_overlap": float(overlap)}
        if config.writer_init == "lora":
            logger.info("SAILS: writer_init='lora': only the readers start in a SAILS basis (reader_features); "
                        "`features` is not used.")
    return subspace, stats


def _side_subspace(rows: dict[int, torch.Tensor], info: dict[int, dict], config: SAILSConfig,
                   rank: int) -> tuple[Subspace, dict]:
    """Stage 2 on one set of decoder rows (per layer): the basis and its statistics."""
    subspace = build_subspace(torch.cat(list(rows.values())), config.variance_threshold, rank,
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
    `initialize_sails_weights` for what each module gets. Readers get `subspace.readers` when it is set
    (two-sided), writers always `subspace.basis`. Returns how many modules of each kind were written."""
    base = base_model_of(model)
    hidden = base.config.hidden_size
    blocks = decoder_layers(base)
    scale = config.a_scale or LORA_ROW_NORM
    stock_config = copy.copy(config)
    stock_config.init_lora_weights = True
    counts = {"n_reader_modules": 0, "n_writer_modules": 0, "n_default_init": 0}
    default_init = []
    weights = _weights_read_or_written(model, blocks, adapter_name, config)
    # ZeRO-3: the LoRA and norm weights (not the base weights) are made whole on every process; what rank 0 writes
    # is partitioned again on exit.
    with gathered([param for _, param in weights], modifier_rank=0):
        for name, param in weights:  # before anything is written
            check_not_partitioned(param, name)
        for name, module in model.named_modules():
            if not isinstance(module, LoraLayer) or adapter_name not in module.lora_A:
                continue
            rank = module.r[adapter_name]
            if module.lora_A[adapter_name].weight.is_meta:
                module.update_layer(adapter_name, r=rank, lora_alpha=module.lora_alpha[adapter_name],
                                    config=stock_config)
            role = module_role(name, config)
            if role is None or (role == "writer" and config.writer_init == "lora"):
                default_init.append(name)
                continue
            lora_a, lora_b = module.lora_A[adapter_name].weight, module.lora_B[adapter_name].weight
            width = lora_a.shape[1] if role == "reader" else lora_b.shape[0]
            if width != hidden:
                raise ValueError(
                    f"{name} is listed as a {role} of the residual stream but its "
                    f"{'input' if role == 'reader' else 'output'} width is {width}, not hidden_size={hidden}; fix "
                    "reader_modules/writer_modules."
                )
            vectors = module_basis(blocks, name, role, subspace.basis_for(role)[:rank], config) * scale
            if role == "reader":
                lora_a.copy_(vectors.to(lora_a))
                lora_b.zero_()
            else:
                lora_b.copy_(vectors.T.to(lora_b))
                lora_a.zero_()
            counts[f"n_{role}_modules"] += 1
        # After deepspeed.initialize the ZeRO-3 optimizer holds fp32 partitions of the trainable weights, which its
        # first step would copy back over what was written: set them too.
        engine_owned = [(param, param.detach().clone()) for _, param in weights
                        if param.requires_grad and hasattr(param, "_z3_optimizer")]
    if engine_owned:
        from deepspeed.utils import safe_set_full_fp32_param

        for param, value in engine_owned:
            safe_set_full_fp32_param(param, value)
    counts["n_default_init"] = len(default_init)
    counts["n_adapter_params"] = sum(_full_numel(p) for n, p in model.named_parameters()
                                     if f".{adapter_name}." in n and "lora_" in n)
    counts["n_base_params"] = sum(_full_numel(p) for n, p in model.named_parameters() if "lora_" not in n)
    if default_init and config.writer_init != "lora":
        logger.warning("SAILS: %d modules are neither readers nor writers and keep LoRA's default init: %s",
                       len(default_init), default_init[:8])
    return counts


def _full_numel(param: torch.Tensor) -> int:
    return getattr(param, "ds_numel", param.numel())  # a ZeRO-3 shard's full size


def _weights_read_or_written(
    model: nn.Module, blocks: nn.ModuleList, adapter_name: str, config: SAILSConfig
) -> list[tuple[str, nn.Parameter]]:
    """The LoRA weights SAILS writes and the norm weights it reads (with norm mapping), named for error messages."""
    weights = [(f"{name} LoRA weight", factor[adapter_name].weight) for name, module in model.named_modules()
               if isinstance(module, LoraLayer) and adapter_name in module.lora_A
               for factor in (module.lora_A, module.lora_B)]
    if config.norm_mapping != "none":
        weights += [(f"layers.{index}.{name}", param) for index, block in enumerate(blocks)
                    for name, param in block.named_parameters() if "norm" in name]
    return weights


def initialize_sails_weights(
    model: nn.Module,
    adapter_name: str = "default",
    config: Optional[SAILSConfig] = None,
    show_progress: bool = True,
    sails_state_dict: Optional[dict[str, torch.Tensor]] = None,
) -> Optional[Subspace]:
    """Initialise the LoRA weights of `adapter_name` in the SAILS subspace, in place; return the subspace.

    Call it after `get_peft_model(model, config, low_cpu_mem_usage=True)` (weights left on the meta device are
    created here), or let `get_peft_model` call it. With `sails_state_dict` (from `get_sails_state_dict`, e.g.
    computed once on the full-precision model for a 4-bit QLoRA run) nothing is computed and no SAE is loaded:
    the state dict is checked against the adapter (keys and shapes; nothing is written on a mismatch), written
    into it, and None is returned. For each adapted module:

    - readers of the residual stream (`config.reader_modules`, e.g. q/k/v/gate/up): `lora_A` rows span the basis
      divided by the scale `s` of the module's input RMSNorm (`norm_mapping="residual"`), so that, as the module
      sees `s * h / rms(h)`, the adapter reads exactly the basis directions of the residual stream `h`; `lora_B` = 0;
    - writers (`config.writer_modules`, e.g. o/down) with `writer_init="basis"`: `lora_B` columns = basis (mapped
      through the inverse of a post-norm, as in Gemma-2), `lora_A` = 0; with `"lora"`: PEFT's default init;
    - other modules keep PEFT's default init (a warning lists them).

    Two-sided (experimental, `config.reader_features` set): readers get the basis built (same stage 2) from
    `reader_features`, writers the one from `features`; `subspace_stats["readers"]` holds the readers' statistics.

    Every basis vector has norm `config.a_scale` (default 1/sqrt(3), PEFT's expected row norm for lora_A), so
    the usual LoRA learning rates apply. Either `lora_A` or `lora_B` is zero, so outputs equal the base model's.
    Statistics (basis size, variance kept, per layer) go to `config.subspace_stats`.
    Memory: one SAE at a time, then only the selected decoder rows and an `[r, d_model]` basis.
    """
    config = config or getattr(model, "module", model).peft_config[adapter_name]  # through DDP-style wrappers
    if sails_state_dict is not None:
        _load_sails_state_dict(model, sails_state_dict, adapter_name, config)
        return None
    if not config.features:
        raise ValueError("The SAILSConfig has no `features`: run peft_sails.select_features first.")
    subspace, stats = compute_sails_subspace(base_model_of(model), config, show_progress)
    apply_subspace(model, adapter_name, config, subspace, stats)
    return subspace


def apply_subspace(model: nn.Module, adapter_name: str, config: SAILSConfig, subspace: Subspace, stats: dict) -> None:
    """Write `subspace` into the adapter and record the statistics in `config.subspace_stats`."""
    config.subspace_stats = {**stats, **write_sails_weights(model, adapter_name, config, subspace)}


_LORA_FACTORS = ("lora_A", "lora_B")
_STATE_DICT_ADAPTER = "sails_state_dict"  # the temporary adapter `get_sails_state_dict` adds to a PeftModel


@torch.no_grad()
def get_sails_state_dict(
    model: nn.Module,
    config: Optional[SAILSConfig] = None,
    adapter_name: str = "default",
    show_progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Compute the SAILS initialisation of an adapter and return it as a state dict; the model is left as it was.

    The keys are those of `peft.get_peft_model_state_dict` (e.g.
    `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), one `lora_A` and one `lora_B` per adapted
    module, holding exactly what `get_peft_model(model, config)` writes (modules that are neither readers nor
    writers carry PEFT's default values, so every process that loads the state dict starts from the same adapter).

    The QLoRA workflow, as with PEFT's `get_eva_state_dict`: compute this once on the full-precision model, then

        peft_model = get_peft_model(model_4bit, config, low_cpu_mem_usage=True)  # no SAE is loaded
        initialize_sails_weights(peft_model, sails_state_dict=state_dict)

    (plain PEFT's `set_peft_model_state_dict(peft_model, state_dict)` loads it too). SAILS reads no Linear weight,
    only RMSNorm weights and the SAEs' decoder rows, so no quantized weight is ever read.

    Args:
        model: a transformers model, or a PeftModel. A transformers model gets the adapter injected and removed
            again (`unload`); a PeftModel gets a temporary adapter, deleted afterwards.
        config: the `SAILSConfig`, with `features` set; defaults to `model.peft_config[adapter_name]`. Its
            `subspace_stats` are filled as `get_peft_model` fills them: give the same config to the model that
            loads the state dict, so that its model card reports them.
        adapter_name: the adapter whose config is the default `config` (the keys do not depend on it).
        show_progress: show a progress bar while the SAEs load.

    Returns:
        float32 tensors on the model's device. Memory: that of `get_peft_model` (one SAE at a time), plus the
        adapter's weights.
    """
    wrapped = getattr(model, "module", model)  # DistributedDataParallel and friends
    config = config or wrapped.peft_config[adapter_name]
    if not config.features:
        raise ValueError("The SAILSConfig has no `features`: run peft_sails.select_features first.")
    work = copy.deepcopy(config)
    if isinstance(wrapped, PeftModel):
        wrapped.add_adapter(_STATE_DICT_ADAPTER, work)
        try:
            state = get_peft_model_state_dict(wrapped, adapter_name=_STATE_DICT_ADAPTER, save_embedding_layers=False)
        finally:
            wrapped.delete_adapter(_STATE_DICT_ADAPTER)
    else:
        if hasattr(wrapped, "peft_config"):
            raise ValueError(
                "The model holds PEFT adapters but is not a PeftModel (e.g. transformers' `add_adapter`): pass the "
                "base model without adapters, or the PeftModel."
            )
        requires_grad = {name: param.requires_grad for name, param in wrapped.named_parameters()}
        peft_model = get_peft_model(wrapped, work, adapter_name=adapter_name)
        try:
            state = get_peft_model_state_dict(peft_model, adapter_name=adapter_name, save_embedding_layers=False)
        finally:
            peft_model.unload()  # takes the LoRA layers (and `model.peft_config`) out again
            for name, param in wrapped.named_parameters():  # get_peft_model froze the base weights
                param.requires_grad_(requires_grad[name])
    config.subspace_stats = work.subspace_stats
    return {key: value for key, value in state.items() if key.endswith((".lora_A.weight", ".lora_B.weight"))}


@torch.no_grad()
def _load_sails_state_dict(
    model: nn.Module, sails_state_dict: dict[str, torch.Tensor], adapter_name: str, config: SAILSConfig
) -> None:
    """Write a `get_sails_state_dict` result into the LoRA weights of `adapter_name` (weights still on the meta
    device are created first), cast to each weight's dtype and device. Keys and shapes are checked against every
    LoRA module of the adapter before anything is written."""
    wrapped = getattr(model, "module", model)
    modules = {n: m for n, m in wrapped.named_modules() if isinstance(m, LoraLayer) and adapter_name in m.lora_A}
    if not modules:
        raise ValueError(
            f"The model has no LoRA layer of adapter '{adapter_name}': create it first, e.g. with "
            "get_peft_model(model, config, low_cpu_mem_usage=True)."
        )
    expected = {f"{name}.{factor}.weight": (name, factor) for name in modules for factor in _LORA_FACTORS}
    missing = sorted(expected.keys() - sails_state_dict.keys())
    unexpected = sorted(sails_state_dict.keys() - expected.keys())
    if missing or unexpected:
        raise ValueError(
            f"The SAILS state dict does not fit adapter '{adapter_name}': {len(missing)} keys missing "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}. Compute it with get_sails_state_dict "
            "for the same architecture and target_modules, and load it into the PeftModel (the keys are those of "
            "peft.get_peft_model_state_dict)."
        )
    mismatched = []
    for key, (name, factor) in expected.items():
        weight = getattr(modules[name], factor)[adapter_name].weight
        check_not_partitioned(weight, f"{name} LoRA weight")
        if tuple(weight.shape) != tuple(sails_state_dict[key].shape):
            mismatched.append(f"{name}.{factor}: the adapter has shape {tuple(weight.shape)}, the state dict "
                              f"{tuple(sails_state_dict[key].shape)}")
    if mismatched:
        raise ValueError(
            f"The SAILS state dict does not fit adapter '{adapter_name}' ({len(mismatched)} weights differ; was it "
            f"computed with another r or rank_pattern?): " + "; ".join(mismatched[:3])
        )
    stock_config = copy.copy(config)
    stock_config.init_lora_weights = True
    for name, module in modules.items():
        if module.lora_A[adapter_name].weight.is_meta:
            # update_layer creates the weights in the base layer's dtype (a 4-bit layer's compute dtype, e.g. bf16);
            # keep the dtype get_peft_model gave the meta weights (float32 with its default autocast_adapter_dtype)
            dtype = module.lora_A[adapter_name].weight.dtype
            module.update_layer(adapter_name, r=module.r[adapter_name], lora_alpha=module.lora_alpha[adapter_name],
                                config=stock_config)
            for factor in _LORA_FACTORS:
                getattr(module, factor)[adapter_name].to(dtype)
        for factor in _LORA_FACTORS:
            weight = getattr(module, factor)[adapter_name].weight
            weight.copy_(sails_state_dict[f"{name}.{factor}.weight"].to(weight))
