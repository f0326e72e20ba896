"""Load SAEs through sae-lens and tie each one to a residual-stream position of a transformers model."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import is_offline_mode, list_repo_files, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
from sae_lens import SAE
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from torch import nn

from .residual import ResidualSite


def load_sae(release: str, sae_id: str, device: str | torch.device = "cpu") -> SAE:
    """Load one SAE with sae-lens: from a release or Hub repo id (`SAE.from_pretrained`) or a local directory.

    A local directory is either the SAE folder itself (`cfg.json` + `sae_weights.safetensors`) or a folder that
    holds it under `sae_id`. Errors name the release, the id, and whether `HF_HUB_OFFLINE` is set.
    """
    device = str(device)
    path = local_sae_folder(release, sae_id)
    if path is not None:
        return SAE.load_from_disk(path, device=device)
    with explained_load_errors(release, sae_id):
        return SAE.from_pretrained(release, sae_id, device=device)


def local_sae_folder(release: str, sae_id: str) -> str | None:
    """The folder of a local sae-lens SAE (`release` itself, or `release/sae_id`); None if `release` is no folder."""
    if not os.path.isdir(release):
        return None
    path = os.path.join(release, sae_id) if os.path.isdir(os.path.join(release, sae_id)) else release
    if not os.path.isfile(os.path.join(path, "cfg.json")):
        raise FileNotFoundError(f"No sae-lens SAE (cfg.json) in {path!r} for sae_id {sae_id!r}.")
    return path


@contextmanager
def explained_load_errors(release: str, sae_id: str) -> Iterator[None]:
    """Re-raise a failed load of SAE `sae_id` of `release` with what was wrong and what to do: the release or repo
    and the id, whether `HF_HUB_OFFLINE` is set, and which sae-lens release reads a repo that is not in sae-lens'
    own format."""
    try:
        yield
    except (LocalEntryNotFoundError, EntryNotFoundError, RepositoryNotFoundError, OSError) as err:
        listing = _repo_files(release)
        own = sorted(f.rsplit("/", 1)[0] for f in listing or [] if f.endswith("/cfg.json"))
        if listing is not None and not own:
            here = [f.split("/")[-1] for f in listing if f.startswith(f"{sae_id}/")]
            raise ValueError(
                f"SAE {sae_id!r} of {release!r}: the repo is {'in the local cache' if is_offline_mode() else 'there'}, "
                f"but {f'its folder holds {here[:5]} and' if here else f'it has no folder {sae_id!r} and'} no sae-lens "
                "cfg.json: it is not in sae-lens' own format, which a repo id needs. Give the sae-lens release that "
                f"reads this repo as `sae_release`: {_releases_of_repo(release) or 'see sae-lens pretrained_saes.yaml'}."
            ) from err
        if listing is not None and sae_id not in own:
            raise FileNotFoundError(f"Repo {release!r} has no SAE {sae_id!r} (a folder with cfg.json); it has {own[:10]}.")
        hint = (
            "HF_HUB_OFFLINE is set, so only the local Hugging Face cache is searched: download the SAE once "
            "with a network, or point `sae_release` at a local directory."
            if is_offline_mode()
            else "Check the release/repo id and the SAE id (sae-lens' pretrained_saes.yaml lists the releases)."
        )
        raise FileNotFoundError(
            f"Could not load SAE {sae_id!r} of release {release!r} ({type(err).__name__}). {hint}"
        ) from err
    except ValueError as err:  # sae-lens: unknown release or id, with the valid ids in its message
        raise ValueError(f"SAE {sae_id!r} of release {release!r}: {err}") from err


def _releases_of_repo(repo_id: str) -> list[str]:
    """The sae-lens releases whose SAEs live in Hub repo `repo_id` (e.g. google/gemma-scope-2b-pt-res)."""
    return sorted(name for name, lookup in get_pretrained_saes_directory().items() if lookup.repo_id == repo_id)


def _repo_files(repo_id: str) -> list[str] | None:
    """The files of Hub repo `repo_id` (only the local cache's snapshot when offline; nothing is downloaded), or
    None when it is not a repo that can be listed."""
    try:
        if not is_offline_mode():
            return list_repo_files(repo_id)
        root = Path(snapshot_download(repo_id, local_files_only=True))
        return [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    except Exception:  # not a repo id, not cached, no network: the caller's own error says so
        return None


_CACHE_SNAPSHOT = re.compile(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\][0-9a-f]{40}")


def _model_names(model: nn.Module) -> list[str]:
    """The model's name as a Hub id would give it: a folder of a Hub cache snapshot (`models--org--name/
    snapshots/<commit>`) is named after its repo, not its commit hash."""
    names = [getattr(model.config, "_name_or_path", None) or getattr(model, "name_or_path", None)]
    out = []
    for name in filter(None, names):
        snapshot = _CACHE_SNAPSHOT.search(name)
        out.append((snapshot.group(2) if snapshot else name.rstrip("/\\").rsplit("/", 1)[-1]).lower())
    return out


def check_sae_fits(sae: SAE, model: nn.Module, layer: int, check_model_name: bool = True) -> ResidualSite:
    """Check that `sae` reads the residual stream of `model` at decoder layer `layer`; return where it reads."""
    meta = sae.cfg.metadata
    site = ResidualSite.from_hook_name(meta.hook_name)
    n_layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    if site.layer != layer:
        raise ValueError(f"The SAE given for layer {layer} reads '{meta.hook_name}' (layer {site.layer}); fix `sae_ids`.")
    if not 0 <= layer < n_layers:
        raise ValueError(f"SAE layer {layer} is out of range: the model has {n_layers} layers (0..{n_layers - 1}).")
    if sae.cfg.d_in != hidden:
        raise ValueError(
            f"SAE for layer {layer} has d_in={sae.cfg.d_in} but the model's hidden size is {hidden}: "
            "this SAE was trained on another model."
        )
    sae_model = (meta.model_name or "").rsplit("/", 1)[-1].lower()
    names = _model_names(model)
    if check_model_name and sae_model and names and not any(n.startswith(sae_model) for n in names):
        raise ValueError(
            f"SAE for layer {layer} was trained on '{meta.model_name}', but the model is '{names[0]}' (from its "
            "name_or_path). Use the SAE of this model (or of its base model), or, if you are sure it fits (e.g. a "
            "model loaded from a local folder with another name), set check_sae_model=False (recipes: "
            "--check_sae_model false)."
        )
    return site
