"""Push a SAILS adapter to the Hub in one commit: weights, plain-LoRA config, sidecar and *our* model card.

`PeftModel.push_to_hub` and `Trainer.push_to_hub` write their own README.md after saving; this helper (and
`SailsSFTTrainer`) make the SAILS card the one that lands.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from peft import PeftModel

from .card import EVAL_NAME, TRAINING_NAME, write_card

# Files of an adapter folder worth publishing (never training_args.bin, a pickle, nor checkpoints).
PUSHED_PATTERNS = ("adapter_*", "sails_*.json", "tokenizer*", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def _stage(source: Union[PeftModel, str, os.PathLike], folder: Path) -> None:
    if isinstance(source, PeftModel):
        source.save_pretrained(folder)
        return
    source = Path(source)
    if not (source / "sails_config.json").is_file():
        raise FileNotFoundError(f"{source} has no sails_config.json: is it a saved SAILS adapter folder?")
    for pattern in PUSHED_PATTERNS:
        for path in source.glob(pattern):
            if path.is_file():
                shutil.copy(path, folder / path.name)


def push_sails_adapter(
    source: Union[PeftModel, str, os.PathLike],
    repo_id: str,
    *,
    training: Optional[dict[str, Any]] = None,
    eval_results: Optional[list[dict[str, Any]]] = None,
    commit_message: str = "Upload SAILS adapter",
    private: Optional[bool] = None,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Save (a `PeftModel`) or take (a saved folder) the adapter, write its card, and push it in one commit.

    The repo is created (with `private`) only if the commit finds it missing. `training` (dict of settings and
    `datasets`) and `eval_results` (`[{dataset_name, dataset_type, metric_type, metric_value}]`, written as
    model-index metadata) are saved as `sails_training.json` / `sails_eval.json` and shown in the card.
    """
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        _stage(source, folder)
        if training is not None:
            (folder / TRAINING_NAME).write_text(json.dumps(training, indent=2, default=str))
        if eval_results is not None:
            (folder / EVAL_NAME).write_text(json.dumps(eval_results, indent=2))
        write_card(folder, repo_id=repo_id)
        operations = [CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in sorted(folder.iterdir())]
        commit = dict(repo_id=repo_id, operations=operations, commit_message=commit_message, revision=revision,
                      create_pr=create_pr)
        try:
            return api.create_commit(**commit)
        except RepositoryNotFoundError:
            api.create_repo(repo_id, private=private, exist_ok=True)
            return api.create_commit(**commit)
