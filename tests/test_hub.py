"""Pushing: one commit with adapter, sidecar and the SAILS card, tested up to the HTTP boundary: only the
huggingface_hub call that sends the commit (`HfApi.create_commit`, or `HfApi.upload_folder` for Trainer) and
`HfApi.create_repo` are replaced, by recorders of what would be sent."""

import copy
from concurrent.futures import Future
from unittest.mock import patch

import httpx2
import pytest
from huggingface_hub import CommitInfo, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError
from peft import get_peft_model
from trl import SFTConfig

from peft_sails.hub import push_sails_adapter
from peft_sails.trainer import SailsSFTTrainer

ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json", "sails_config.json", "README.md"}


class CommitRecorder:
    """Stands in for `HfApi.create_commit`: records what would be sent, optionally failing once with a 404."""

    def __init__(self, missing_repo: bool = False):
        self.commits, self.missing_repo = [], missing_repo

    def __call__(self, repo_id, operations, **kwargs):  # patched on the class unbound: no `self` of HfApi
        files = {}
        for op in operations:
            source = op.path_or_fileobj
            files[op.path_in_repo] = open(source, "rb").read() if isinstance(source, str) else source.read()
        if self.missing_repo:
            self.missing_repo = False
            request = httpx2.Request("POST", f"https://huggingface.co/api/models/{repo_id}/commit/main")
            raise RepositoryNotFoundError("404", response=httpx2.Response(404, request=request))
        self.commits.append({"repo_id": repo_id, "files": files, **kwargs})
        return CommitInfo(commit_url=f"https://huggingface.co/{repo_id}/commit/abc", commit_message="",
                          commit_description="", oid="abc")


@pytest.mark.parametrize("missing_repo", [False, True])
def test_push_sails_adapter_sends_one_commit(llama, selected_config, missing_repo):
    model = get_peft_model(llama, copy.deepcopy(selected_config))
    recorder = CommitRecorder(missing_repo)
    with patch("huggingface_hub.HfApi.create_commit", recorder), \
            patch("huggingface_hub.HfApi.create_repo") as create_repo:
        push_sails_adapter(model, "me/tiny-sails", training={"learning_rate": 0.01, "datasets": ["org/data"]},
                           eval_results=[{"dataset_name": "toy", "dataset_type": "local", "metric_type": "safety_rate",
                                          "metric_value": 0.5}], private=True)
    assert len(recorder.commits) == 1 and create_repo.call_count == int(missing_repo)
    if missing_repo:
        assert create_repo.call_args.kwargs["private"] is True
    files = recorder.commits[0]["files"]
    assert ADAPTER_FILES | {"sails_training.json", "sails_eval.json"} == set(files)
    card = files["README.md"].decode()
    assert "## Chosen SAE features" in card and "me/tiny-sails" in card and "safety_rate" in card


def test_push_from_folder_skips_pickles(tmp_path, llama, selected_config):
    get_peft_model(llama, copy.deepcopy(selected_config)).save_pretrained(tmp_path)
    (tmp_path / "training_args.bin").write_bytes(b"pickle")
    recorder = CommitRecorder()
    with patch("huggingface_hub.HfApi.create_commit", recorder):
        push_sails_adapter(tmp_path, "me/tiny-sails")
    assert set(recorder.commits[0]["files"]) == ADAPTER_FILES
    with pytest.raises(FileNotFoundError, match="no sails_config.json"):
        push_sails_adapter(tmp_path / "nowhere", "me/x")


class UploadFolderRecorder(CommitRecorder):
    """Stands in for `HfApi.upload_folder`, the call Trainer sends its commits with: records the folder's files."""

    def __call__(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
        from fnmatch import fnmatch
        from pathlib import Path

        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()
                 if p.is_file() and not any(fnmatch(p.name, pat) for pat in ignore_patterns)}
        self.commits.append({"repo_id": repo_id, "files": files})
        if kwargs.get("run_as_future"):  # checkpoint pushes run in the background
            done = Future()
            done.set_result(None)
            return done


@pytest.mark.slow
def test_sails_sft_trainer_pushes_our_card(tmp_path, llama, tokenizer, data, selected_config):
    """push_to_hub=True: the checkpoint push and the final push both carry the sidecar and the SAILS card."""
    args = SFTConfig(output_dir=str(tmp_path), max_steps=2, save_strategy="steps", save_steps=2, bf16=False,
                     use_cpu=True, report_to=[], push_to_hub=True, hub_model_id="me/tiny-sails",
                     per_device_train_batch_size=4)
    recorder = UploadFolderRecorder()
    with patch("huggingface_hub.HfApi.upload_folder", recorder), \
            patch("huggingface_hub.HfApi.create_repo", return_value=type("R", (), {"repo_id": "me/tiny-sails"})()):
        trainer = SailsSFTTrainer(model=llama, args=args, train_dataset=data[0], processing_class=tokenizer,
                                  peft_config=copy.deepcopy(selected_config))
        trainer.train()
        trainer._finish_current_push()
        trainer.push_to_hub(dataset_name="toy-safety")
    assert len(recorder.commits) == 2  # the checkpoint push, then the final one
    for commit in recorder.commits:
        assert {"sails_config.json", "README.md", "adapter_model.safetensors"} <= set(commit["files"])
        assert "## Chosen SAE features" in commit["files"]["README.md"].decode()
    final = ModelCard(recorder.commits[-1]["files"]["README.md"].decode())
    assert "**trainer:** TRL SailsSFTTrainer" in final.text and "toy-safety" in final.text
