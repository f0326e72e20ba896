"""Read only the parts of an SAE that a stage needs: the encoder for selection, the selected decoder rows for the
subspace.

A Gemma Scope SAE 131,072 wide at d = 3,584 holds 3.8 GB of float32 weights; selection needs the encoder and the
subspace needs a few decoder rows. The weight files of three formats are memory-mapped, so a stage reads only the
bytes it touches: sae-lens' own (`sae_weights.safetensors`), Gemma Scope (`params.npz`, stored uncompressed) and
Llama Scope (`checkpoints/final.safetensors`). The SAE itself is still built by sae-lens (`SAE.from_pretrained`
or `SAE.load_from_disk` with a converter that reads these files the way sae-lens' own loader does), so its config,
metadata and `encode` are sae-lens'. Any other format, or an SAE whose encoder reads its decoder norms, is loaded
whole by sae-lens.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import hf_hub_download
from sae_lens import SAE
from sae_lens.loading.pretrained_sae_loaders import (
    NAMED_PRETRAINED_SAE_CONFIG_GETTERS,
    NAMED_PRETRAINED_SAE_LOADERS,
    get_conversion_loader_name,
    get_sae_lens_config_from_disk,
    sae_lens_disk_loader,
)
from sae_lens.loading.pretrained_saes_directory import get_norm_scaling_factor, get_pretrained_saes_directory

from .sae_loading import explained_load_errors, load_sae, local_sae_folder

logger = logging.getLogger(__name__)
DecoderRows = Callable[[list[int]], torch.Tensor]
_SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.int16, "F64": np.float64}


def load_sae_parts(release: str, sae_id: str, device: str | torch.device = "cpu",
                   encoder: bool = True) -> tuple[SAE, DecoderRows]:
    """The sae-lens SAE `sae_id` of `release` (as `load_sae` takes them) without its decoder matrix (and without
    its encoder matrix unless `encoder`), plus a function that reads decoder rows by feature id.

    The matrices left out are zero-size placeholders of the right shape (`expand` of one zero): `sae.encode` works
    when `encoder` is set, `sae.decode` does not; use `decode_active`. The rows equal those of the whole SAE that
    `load_sae` gives (float32, CPU, activation-norm factor folded in). Formats this module cannot read in parts are
    loaded whole (logged)."""
    device = str(device)
    reader = _PartReader(release, sae_id, encoder)
    if reader.format is None:
        sae = load_sae(release, sae_id, device=device)
    else:
        with explained_load_errors(release, sae_id):
            sae = (SAE.load_from_disk(reader.path, device=device, converter=reader.from_disk)
                   if reader.path is not None else
                   SAE.from_pretrained(release, sae_id, device=device, converter=reader.from_hub))
        if not reader.whole:
            return sae, reader.decoder_rows
    logger.info("SAE %r of %r is read whole: its format cannot be read in parts.", sae_id, release)
    return sae, lambda ids: sae.W_dec[ids].detach().float().cpu()


def decode_active(sae: SAE, acts: torch.Tensor, decoder_rows: DecoderRows) -> torch.Tensor:
    """`sae.decode(acts)` computed with sae-lens' own `decode` on the decoder rows of the features that fire in
    `acts` only (a few thousand rows of a wide SAE instead of all of them)."""
    ids = torch.nonzero(acts.any(0)).flatten()
    placeholder = sae.W_dec
    sae.W_dec = torch.nn.Parameter(decoder_rows(ids.tolist()).to(acts), requires_grad=False)
    try:
        return sae.decode(acts[:, ids])
    finally:
        sae.W_dec = placeholder


def mapped_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, memory-mapped copy-on-write: nothing is read until it is touched."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which is not read in parts.")
        begin, end = entry["data_offsets"]
        out[name] = _mapped(path, _SAFETENSORS_DTYPES[entry["dtype"]], 8 + size + begin, entry["shape"],
                            bf16=entry["dtype"] == "BF16", empty=begin == end)
    return out


def mapped_npz(path: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The arrays of an `.npz` file, memory-mapped copy-on-write; None if a member is compressed (np.savez_compressed)."""
    out = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            f.seek(info.header_offset)
            local = f.read(30)
            name_len, extra_len = struct.unpack("<HH", local[26:30])
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if fortran or dtype.hasobject:
                return None
            out[info.filename.removesuffix(".npy")] = _mapped(path, dtype, f.tell(), shape)
    return out


def _mapped(path: Any, dtype: Any, offset: int, shape: Any, bf16: bool = False, empty: bool = False) -> torch.Tensor:
    if empty or int(np.prod(shape)) == 0:
        return torch.empty(tuple(shape), dtype=torch.bfloat16 if bf16 else torch.from_numpy(np.empty(0, dtype)).dtype)
    array = np.memmap(path, dtype=dtype, mode="c", offset=offset, shape=tuple(shape))
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if bf16 else tensor


class _PartReader:
    """Reads one SAE's files the way sae-lens' loader for its format does, memory-mapped; serves sae-lens as a
    converter (with placeholders for the matrices left out) and the decoder rows by id."""

    def __init__(self, release: str, sae_id: str, encoder: bool) -> None:
        self.encoder = encoder
        self.whole = False  # set when the files turn out not to be readable in parts
        self.factor = None
        self.folded = False
        self.path = local_sae_folder(release, sae_id)
        if self.path is not None:
            self.format = "sae_lens"
        elif release in get_pretrained_saes_directory():
            name = get_conversion_loader_name(release)
            self.format = name if name in ("sae_lens", "gemma_2", "llama_scope") else None
            self.factor = get_norm_scaling_factor(release, sae_id)
        else:
            self.format = "sae_lens"  # a Hub repo id: sae-lens' own format
        self.tensors: dict[str, torch.Tensor] = {}

    def from_hub(self, repo_id: str, folder_name: str, device: str, force_download: bool,
                 cfg_overrides: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, torch.Tensor], None]:
        cfg = NAMED_PRETRAINED_SAE_CONFIG_GETTERS[self.format](repo_id, folder_name, device, force_download,
                                                               cfg_overrides)
        file = {"sae_lens": f"{folder_name}/sae_weights.safetensors", "gemma_2": f"{folder_name}/params.npz",
                "llama_scope": f"{folder_name}/checkpoints/final.safetensors"}[self.format]
        state = self._state(cfg, hf_hub_download(repo_id, file, force_download=force_download), device)
        if state is None:
            return NAMED_PRETRAINED_SAE_LOADERS[self.format](repo_id, folder_name, device, force_download,
                                                             cfg_overrides)
        return (*state, None)

    def from_disk(self, path: str | Path, device: str,
                  cfg_overrides: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        cfg = get_sae_lens_config_from_disk(path, device, cfg_overrides)
        state = self._state(cfg, Path(path) / "sae_weights.safetensors", device)
        return sae_lens_disk_loader(path, device, cfg_overrides) if state is None else state

    def _state(self, cfg: dict[str, Any], file: str | Path, device: str) -> tuple[dict[str, Any], dict] | None:
        """The state dict sae-lens' loader makes from `file`, with the matrices left out as placeholders; None
        (read whole by sae-lens' own loader) for a compressed npz, an encoder that reads its decoder norms, or an
        embedding SAE (rescaled by sqrt(d_in) at load)."""
        raw = mapped_npz(file) if self.format == "gemma_2" else mapped_safetensors(file)
        if raw is None or cfg.get("rescale_acts_by_decoder_norm") or "embedding" in str(file):
            self.whole = True
            return None
        if self.format == "llama_scope":
            state = {"W_enc": raw["encoder.weight"].T, "W_dec": raw["decoder.weight"].T, "b_enc": raw["encoder.bias"],
                     "b_dec": raw["decoder.bias"],
                     "threshold": torch.full((cfg["d_sae"],), float(cfg["jump_relu_threshold"]))}
        else:
            state = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in raw.items()}
            _finetuning_scale(state, cfg)
        self.tensors = state
        dtype = torch.float32 if self.format == "gemma_2" else getattr(torch, cfg.get("dtype") or "float32")
        folded = cfg.get("normalize_activations") == "expected_average_only_in" and self.factor is not None
        self.folded = folded
        out = {}
        for name, tensor in state.items():
            if name == "W_dec" or (name == "W_enc" and not self.encoder):
                out[name] = torch.zeros((), dtype=dtype, device=device).expand(tensor.shape)
                continue
            tensor = tensor.to(dtype=dtype, device=device)
            if folded and name in ("W_enc", "b_dec"):  # sae-lens folds after loading: W_enc * s, b_dec / s
                tensor = tensor * self.factor if name == "W_enc" else tensor / self.factor
            out[name] = tensor
        if folded:
            cfg = {**cfg, "normalize_activations": "none"}
        return cfg, out

    def decoder_rows(self, ids: list[int]) -> torch.Tensor:
        """Decoder rows `ids` as float32, with the activation-norm factor folded in (W_dec / s) as sae-lens does."""
        rows = self.tensors["W_dec"][torch.as_tensor(ids, dtype=torch.long)].float()
        return rows / self.factor if self.folded else rows


def _finetuning_scale(state: dict[str, torch.Tensor], cfg: dict[str, Any]) -> None:
    """sae-lens' handling of a stored `scaling_factor`: dropped when all ones, else kept as the finetuning scale."""
    if "scaling_factor" not in state:
        cfg["finetuning_scaling_factor"] = False
    elif torch.allclose(state["scaling_factor"].float(), torch.ones(())):
        del state["scaling_factor"]
        cfg["finetuning_scaling_factor"] = False
    else:
        if not cfg["finetuning_scaling_factor"]:
            raise ValueError("Scaling factor is present but finetuning_scaling_factor is False.")
        state["finetuning_scaling_factor"] = state.pop("scaling_factor")
