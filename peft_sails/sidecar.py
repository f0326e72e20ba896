"""`sails_config.json`: the SAILS metadata saved beside a plain-LoRA adapter."""

from __future__ import annotations

import json
import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Optional

from huggingface_hub import hf_hub_download

SIDECAR_NAME = "sails_config.json"
SIDECAR_FORMAT = 1
_VERSIONED = ("peft-sails", "peft", "transformers", "sae-lens", "torch", "trl")
_META_KEYS = ("format_version", "library_versions", "adapter")


def library_versions() -> dict[str, Optional[str]]:
    def _version(name: str) -> Optional[str]:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {name: _version(name) for name in _VERSIONED}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder, so a crash leaves no half file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; saved files are as public as open() makes them
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_sidecar(path: str, sails_fields: dict[str, Any], adapter: dict[str, Any]) -> None:
    """Write the SAILS fields, the library versions and `adapter`, the fingerprint of the adapter it describes."""
    payload = {"format_version": SIDECAR_FORMAT, "library_versions": library_versions(), "adapter": adapter,
               **sails_fields}
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True))


def read_sidecar(
    model_id: str, subfolder: Optional[str] = None, expected_adapter: Optional[dict[str, Any]] = None, **hub_kwargs
) -> dict[str, Any]:
    """Read and validate the sidecar of a local adapter folder or a Hub repo; return SAILSConfig field values.

    With `expected_adapter` (the fingerprint of the adapter_config.json beside it), a sidecar that describes
    another adapter is refused.
    """
    local = os.path.join(model_id, subfolder or "", SIDECAR_NAME)
    if os.path.isfile(local):
        path = local
    else:
        hub_kwargs = {k: v for k, v in hub_kwargs.items() if k in ("revision", "token", "cache_dir", "force_download")}
        try:
            path = hf_hub_download(model_id, SIDECAR_NAME, subfolder=subfolder, **hub_kwargs)
        except Exception as err:
            raise FileNotFoundError(
                f"No {SIDECAR_NAME} found for {model_id!r} ({type(err).__name__}: {err}). The adapter may be a plain "
                "LoRA adapter: load it with peft.PeftModel.from_pretrained, which does not need the SAILS metadata."
            ) from err
    with open(path) as handle:
        try:
            payload = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(payload, dict) or payload.get("format_version") != SIDECAR_FORMAT:
        raise ValueError(
            f"{path} is not a peft-sails sidecar of format {SIDECAR_FORMAT} "
            f"(format_version={payload.get('format_version') if isinstance(payload, dict) else None!r})."
        )
    if expected_adapter is not None and payload.get("adapter") is not None:
        differ = [f"{k} {v!r} (sidecar) vs {expected_adapter.get(k)!r} (adapter_config.json)"
                  for k, v in payload["adapter"].items() if expected_adapter.get(k) != v]
        if differ:
            raise ValueError(f"{path} does not describe the adapter beside it: {'; '.join(differ)}. "
                             "Was it copied from another adapter?")
    return _validated_fields(payload, path)


def _validated_fields(payload: dict[str, Any], path: str) -> dict[str, Any]:
    from .config import SAILSConfig  # the config defines which fields are allowed

    allowed = set(SAILSConfig.__dataclass_fields__)
    fields = {k: v for k, v in payload.items() if k not in _META_KEYS}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"{path} has unknown fields {unknown}; was it written by a newer peft-sails?")
    for name in ("features", "reader_features"):
        for layer, feats in (fields.get(name) or {}).items():
            if not isinstance(feats, list) or not all(
                isinstance(f, dict) and isinstance(f.get("id"), int) and f["id"] >= 0 for f in feats
            ):
                raise ValueError(f"{path}: {name} of layer {layer} must be a list of {{'id': int >= 0, ...}} entries.")
    return fields
