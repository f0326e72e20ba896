"""Saving as plain LoRA + sidecar; loading in a process that never imports peft_sails gives the same logits."""

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import HUB_CACHE
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from peft_sails import SAILSConfig, load_sails_adapter
from peft_sails.offline import hub_cache_snapshot

INPUT_IDS = [[2, 5, 9, 11, 14, 20, 7, 6, 30, 31, 40]]

LOAD_WITHOUT_PLUGIN = textwrap.dedent("""
    import json, sys, torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM
    base_dir, adapter, out = sys.argv[1:4]
    ids = torch.tensor(%s)
    with torch.no_grad():
        plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter)
        auto = AutoPeftModelForCausalLM.from_pretrained(adapter)
        logits = {"peft": plain(input_ids=ids).logits, "auto": auto(input_ids=ids).logits}
        logits["merged"] = plain.merge_and_unload()(input_ids=ids).logits
        torch.save(logits, out)
    assert "peft_sails" not in sys.modules
""" % INPUT_IDS)


@pytest.fixture()
def trained_adapter(tmp_path, tokenizer, selected_config):
    """A SAILS adapter with non-zero lora_B (as after training), saved next to its base model."""
    from peft_sails.offline import tiny_llama

    base_dir = tmp_path / "tiny-llama"
    tiny_llama(tokenizer).save_pretrained(base_dir)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), copy.deepcopy(selected_config))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    peft_model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        logits = peft_model(input_ids=torch.tensor(INPUT_IDS)).logits
    return base_dir, tmp_path / "adapter", peft_model, logits


def test_saved_config_is_plain_lora_with_sidecar(trained_adapter, selected_config):
    _, adapter, _, _ = trained_adapter
    lora = json.loads((adapter / "adapter_config.json").read_text())
    assert lora["peft_type"] == "LORA" and lora["init_lora_weights"] is True
    assert not {"sae_release", "features", "top_k"} & set(lora)
    sidecar = json.loads((adapter / "sails_config.json").read_text())
    assert sidecar["sae_release"] == selected_config.sae_release
    assert sidecar["features"]["1"] == selected_config.features[1]
    assert sidecar["subspace_stats"]["subspace_dim"] == 4 and "variance_kept" in sidecar["subspace_stats"]
    assert sidecar["library_versions"]["peft"] and sidecar["library_versions"]["sae-lens"]


def test_saved_files_are_as_readable_as_peft_makes_them(trained_adapter):
    _, adapter, _, _ = trained_adapter
    modes = {name: os.stat(adapter / name).st_mode & 0o777
             for name in ("adapter_config.json", "sails_config.json", "README.md")}
    # peft writes adapter_config.json with open() (0644 under the usual umask); mkstemp would give 0600.
    # (adapter_model.safetensors is 0600 whoever saves it: the safetensors library writes it so.)
    assert len(set(modes.values())) == 1, modes


@pytest.mark.slow
def test_load_without_plugin_gives_identical_logits(trained_adapter, tmp_path):
    base_dir, adapter, _, logits = trained_adapter
    repo_id = "local-org/tiny-sails-adapter"
    snapshot = hub_cache_snapshot(repo_id, HUB_CACHE)
    for f in adapter.iterdir():
        shutil.copy(f, snapshot / f.name)
    for source in (str(adapter), repo_id):  # local folder, then the Hub cache with HF_HUB_OFFLINE=1
        out = tmp_path / "logits.pt"
        subprocess.run([sys.executable, "-c", LOAD_WITHOUT_PLUGIN, str(base_dir), source, str(out)], check=True,
                       env={**os.environ, "HF_HUB_CACHE": HUB_CACHE, "HF_HUB_OFFLINE": "1"})
        loaded = torch.load(out, weights_only=True)
        assert torch.equal(loaded["peft"], logits) and torch.equal(loaded["auto"], logits)
        assert torch.allclose(loaded["merged"], logits, atol=1e-5)
    # with the plugin, from the Hub cache: the same model plus the SAILS metadata
    model, sails = load_sails_adapter(AutoModelForCausalLM.from_pretrained(base_dir), repo_id)
    with torch.no_grad():
        assert torch.equal(model(input_ids=torch.tensor(INPUT_IDS)).logits, logits)
    assert sails.features and sails.subspace_stats["subspace_dim"] == 4


def test_load_with_plugin_returns_features(trained_adapter, selected_config):
    base_dir, adapter, _, logits = trained_adapter
    model, sails = load_sails_adapter(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter))
    assert isinstance(model, PeftModel) and isinstance(sails, SAILSConfig)
    assert sails.features == selected_config.features and sails.sae_ids == selected_config.sae_ids
    assert sails.subspace_stats["n_reader_modules"] == 20
    with torch.no_grad():
        assert torch.equal(model(input_ids=torch.tensor(INPUT_IDS)).logits, logits)


def test_sidecar_validation(trained_adapter):
    _, adapter, _, _ = trained_adapter
    path = adapter / "sails_config.json"
    payload = json.loads(path.read_text())
    path.write_text(json.dumps({**payload, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version=99"):
        SAILSConfig.from_pretrained(str(adapter))
    path.write_text(json.dumps({**payload, "surprise": 1}))
    with pytest.raises(ValueError, match="unknown fields"):
        SAILSConfig.from_pretrained(str(adapter))
    path.unlink()
    with pytest.raises(FileNotFoundError, match="plain LoRA"):
        SAILSConfig.from_pretrained(str(adapter))
