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
import math
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
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
DECODE_ROWS_BYTES = 2**24  # decoder rows `decode_active` reads at once for a whole block of activations (16 MB)
DECODE_TOKENS = 32  # else tokens decoded at once: bounds the decoder rows read to 32 x L0
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
    decoder = sae.W_dec.detach()  # this tensor, not the attribute, which decode_active swaps
    return sae, lambda ids: decoder[ids].float().cpu()


def decode_active(sae: SAE, acts: torch.Tensor, decoder_rows: DecoderRows, tokens: int = DECODE_TOKENS) -> torch.Tensor:
    """`sae.decode(acts)` computed with sae-lens' own `decode` on the decoder rows of the features that fire only:
    all of `acts` at once when those rows fit in DECODE_ROWS_BYTES, else `tokens` rows of `acts` at a time (at most
    `tokens` x L0 rows, not all of a wide SAE)."""
    fits = int(acts.any(0).sum()) * sae.cfg.d_in * 4 <= DECODE_ROWS_BYTES
    placeholder, out = sae.W_dec, []
    try:
        for block in [acts] if fits else acts.split(tokens):
            ids = torch.nonzero(block.any(0)).flatten()
            sae.W_dec = torch.nn.Parameter(decoder_rows(ids.tolist()).to(acts), requires_grad=False)
            out.append(sae.decode(block[:, ids]))
    finally:
        sae.W_dec = placeholder
    return torch.cat(out)


@dataclass
class StoredTensor:
    """Where a tensor lies in a file (C order), read on demand: mapped whole, or row by row."""

    path: str
    offset: int
    dtype: np.dtype  # int16 for bfloat16, which numpy lacks
    shape: tuple[int, ...]
    bf16: bool = False

    def _torch(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        return tensor.view(torch.bfloat16) if self.bf16 else tensor

    def mapped(self) -> torch.Tensor:
        """Memory-mapped copy-on-write: pages are read when touched."""
        if math.prod(self.shape) == 0:
            return self._torch(np.empty(self.shape, self.dtype))
        return self._torch(np.memmap(self.path, dtype=self.dtype, mode="c", offset=self.offset, shape=self.shape))

    def rows(self, ids: list[int]) -> torch.Tensor:
        """Rows `ids` of a 2-D tensor, read with one positional read per run of consecutive ids (no mapping: the
        page cache's readahead and large pages never count as this process's memory)."""
        width = self.shape[1] * self.dtype.itemsize
        unique = np.unique(np.asarray(ids, dtype=np.int64))
        out = np.empty((len(unique), self.shape[1]), self.dtype)
        starts = np.flatnonzero(np.diff(unique, prepend=-2) != 1)  # where a run of consecutive ids begins
        with open(self.path, "rb", buffering=0) as f:
            for begin, end in zip(starts, [*starts[1:], len(unique)]):
                f.seek(self.offset + int(unique[begin]) * width)
                f.readinto(memoryview(out[begin:end]).cast("B"))
        return self._torch(out[np.searchsorted(unique, ids)] if len(ids) else out)


def stored_safetensors(path: str | os.PathLike) -> dict[str, StoredTensor]:
    """Where the tensors of a safetensors file lie (only its header is read)."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which is not read in parts.")
        out[name] = StoredTensor(str(path), 8 + size + entry["data_offsets"][0],
                                 np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]), tuple(entry["shape"]),
                                 bf16=entry["dtype"] == "BF16")
    return out


def stored_npz(path: str | os.PathLike) -> dict[str, StoredTensor] | None:
    """Where the arrays of an `.npz` file lie (only the headers are read); None if one is compressed
    (np.savez_compressed) or in Fortran order."""
    out = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as f:
        for info in archive.infolist():
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            f.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            f.seek(info.header_offset + 30 + name_len + extra_len)
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if fortran or dtype.hasobject:
                return None
            out[info.filename.removesuffix(".npy")] = StoredTensor(str(path), f.tell(), dtype, tuple(shape))
    return out


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
        self.decoder: StoredTensor | None = None
        self.transposed = False
        self._whole_decoder: torch.Tensor | None = None

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
        stored = stored_npz(file) if self.format == "gemma_2" else stored_safetensors(file)
        if stored is None or cfg.get("rescale_acts_by_decoder_norm") or "embedding" in str(file):
            self.whole = True
            return None
        if self.format == "llama_scope":  # nn.Linear weights: W_enc and W_dec are their transposes
            names = {"W_enc": ("encoder.weight", True), "W_dec": ("decoder.weight", True),
                     "b_enc": ("encoder.bias", False), "b_dec": ("decoder.bias", False)}
        else:
            names = {("W_" + key[2:] if key.startswith("w_") else key): (key, False) for key in stored}
        self.decoder, self.transposed = stored[names["W_dec"][0]], names["W_dec"][1]
        dtype = torch.float32 if self.format == "gemma_2" else getattr(torch, cfg.get("dtype") or "float32")
        placeholders = {"W_dec": (cfg["d_sae"], cfg["d_in"])} | ({} if self.encoder else {"W_enc": (cfg["d_in"], cfg["d_sae"])})
        state = {name: stored[key].mapped().T if transposed else stored[key].mapped()
                 for name, (key, transposed) in names.items() if name not in placeholders}
        if self.format == "llama_scope":
            state["threshold"] = torch.full((cfg["d_sae"],), float(cfg["jump_relu_threshold"]))
        else:
            _finetuning_scale(state, cfg)
        self.folded = cfg.get("normalize_activations") == "expected_average_only_in" and self.factor is not None
        for name, tensor in state.items():
            tensor = tensor.to(dtype=dtype, device=device)
            if self.folded and name in ("W_enc", "b_dec"):  # sae-lens folds after loading: W_enc * s, b_dec / s
                tensor = tensor * self.factor if name == "W_enc" else tensor / self.factor
            state[name] = tensor
        for name, shape in placeholders.items():
            state[name] = torch.zeros((), dtype=dtype, device=device).expand(shape)
        return ({**cfg, "normalize_activations": "none"} if self.folded else cfg), state

    def decoder_rows(self, ids: list[int]) -> torch.Tensor:
        """Decoder rows `ids` as float32, with the activation-norm factor folded in (W_dec / s) as sae-lens does.
        A decoder stored transposed (Llama Scope) is read whole once: its rows are not contiguous in the file."""
        if not self.transposed:
            rows = self.decoder.rows(ids).float()
        else:
            if self._whole_decoder is None:
                self._whole_decoder = self.decoder.mapped().T.float()
            rows = self._whole_decoder[torch.as_tensor(ids, dtype=torch.long)]
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
