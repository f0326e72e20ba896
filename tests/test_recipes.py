"""The TRL recipe: dry runs reproduce the paper's trainable shares; the tiny recipe runs end to end offline."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from peft_sails import SAILSConfig
from peft_sails.world import WorldArguments, build_offline_world

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("sails_sft", ROOT / "trl_recipes" / "sails_sft.py")
sails_sft = sys.modules["sails_sft"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
spec.loader.exec_module(sails_sft)


@pytest.mark.parametrize(
    "recipe, trainable, of_base, of_total",
    [("gemma-2-2b", 6_389_760, "0.244%", "0.244%"), ("gemma-2-9b", 17_891_328, "0.194%", "0.193%"),
     ("llama-3.1-8b", 13_631_488, "0.170%", "0.169%")],
)
def test_dry_run_matches_paper(recipe, trainable, of_base, of_total, capsys):
    report = sails_sft.cli(["--config", str(ROOT / "trl_recipes" / f"{recipe}.yaml"), "--dry-run"])
    out = capsys.readouterr().out
    assert report["trainable"] == trainable
    assert f"Trainable share of the base model (as the paper reports): {of_base}" in out
    assert f"(PEFT's print_trainable_parameters): {of_total}" in out
    assert "q_proj.lora_A.default.weight: [16," in out


@pytest.mark.parametrize("recipe", sorted(p.stem for p in (ROOT / "trl_recipes").glob("*.yaml")))
def test_every_recipe_parses_with_sft_config(recipe):
    """The full parser (SFTConfig included) accepts each recipe as shipped, and SFT's max_length reaches selection."""
    script_args, training_args, model_args = sails_sft.make_parser().parse_args_and_config(
        ["--config", str(ROOT / "trl_recipes" / f"{recipe}.yaml"), "--bf16", "false", "--max_length", "128",
         "--check_sae_model", "false"])
    config = sails_sft.sails_config(script_args, model_args, training_args.max_length)
    assert config.max_length == 128 and config.check_sae_model is False
    assert config.r == model_args.lora_r and sorted(config.sae_ids) == sorted(script_args.sae_layers)


@pytest.mark.slow
def test_tiny_offline_recipe_end_to_end(tmp_path, monkeypatch):
    world = build_offline_world(WorldArguments(output_dir=str(tmp_path / "world"), sae_repo="local-org/recipe-saes",
                                               n_train=64, base_steps=30, d_sae=128))
    out = tmp_path / "adapter"
    sails_sft.cli(["--config", str(ROOT / "trl_recipes" / "tiny-offline.yaml"), "--model_name_or_path",
                   world.model_dir, "--harmful_dataset", world.harmful_dir, "--benign_dataset", world.benign_dir,
                   "--sae_release", world.sae_repo, "--output_dir", str(out), "--max_steps", "5", "--top_k", "8"])
    sails = SAILSConfig.from_pretrained(str(out))
    assert sorted(sails.features) == [1, 2] and all(len(f) == 8 for f in sails.features.values())
    card = (out / "README.md").read_text()
    assert "## Chosen SAE features" in card and "**steps:** 5" in card and world.harmful_dir in card
    assert json.loads((out / "sails_training.json").read_text())["datasets"] == [world.harmful_dir, world.benign_dir]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(world.model_dir), str(out))
    b = model.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight
    assert torch.count_nonzero(b) > 0  # trained
