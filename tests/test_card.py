"""The SAILS model card: metadata, the feature table with Neuronpedia links, model-index, and the CLI."""

import copy
import json

from conftest import HUB_CACHE, sails_config
from huggingface_hub import ModelCard
from peft import get_peft_model

from peft_sails import select_features
from peft_sails.card import build_card, cli
from peft_sails.offline import make_sae, save_sae_to_hub_cache

EVAL = [{"dataset_name": "HEx-PHI", "dataset_type": "LLM-LAT/hex-phi", "metric_type": "safety_rate",
         "metric_name": "Safety rate", "metric_value": 0.91}]


def _adapter_with_neuronpedia(tmp_path, llama, tokenizer, data, planted_saes):
    """The planted SAEs, re-saved under a repo whose metadata names a Neuronpedia id, as Gemma Scope's do."""
    for layer, sae in planted_saes.items():
        sae = copy.deepcopy(sae)
        sae.cfg.metadata.neuronpedia_id = f"tiny-llama/{layer}-res-256"
        save_sae_to_hub_cache(sae, "local-org/np-saes", f"layer_{layer}", HUB_CACHE)
    config = select_features(llama, tokenizer, sails_config(sae_release="local-org/np-saes"), data[0], data[1],
                             show_progress=False)
    llama.name_or_path = "local-org/tiny-llama"  # as from_pretrained sets it; get_peft_model reads it
    get_peft_model(llama, config).save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter", config


def test_saved_adapter_has_the_sails_card(tmp_path, llama, tokenizer, data, planted_saes):
    adapter, config = _adapter_with_neuronpedia(tmp_path, llama, tokenizer, data, planted_saes)
    card = ModelCard.load(adapter / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "local-org/tiny-llama"
    assert {"sails", "safety", "sae", "base_model:adapter:local-org/tiny-llama"} <= set(card.data.tags)
    top = config.features[2][0]
    assert f"[{top['id']}](https://www.neuronpedia.org/tiny-llama/2-res-256/{top['id']})" in card.text
    assert f"{top['delta']:+.4g}" in card.text and "`local-org/np-saes`" in card.text
    assert "AutoPeftModelForCausalLM.from_pretrained" in card.text and "arXiv:2512.23260" in card.text
    fit = config.sae_fit[2]  # the planted SAEs do not reconstruct: the card shows it and flags it
    assert f"| {fit['explained_variance']:.1%} / {fit['l0']:.1f} ⚠ below the warning threshold |" in card.text
    sidecar = json.loads((adapter / "sails_config.json").read_text())
    assert sidecar["sae_fit"]["2"] == fit


def test_eval_results_become_model_index(tmp_path, llama, tokenizer, data, planted_saes):
    adapter, _ = _adapter_with_neuronpedia(tmp_path, llama, tokenizer, data, planted_saes)
    (tmp_path / "eval.json").write_text(json.dumps(EVAL))
    (tmp_path / "training.json").write_text(json.dumps({"learning_rate": 2e-4, "datasets": ["org/data"]}))
    cli([str(adapter), "--repo_id", "me/tiny-sails", "--eval_json", str(tmp_path / "eval.json"),
         "--training_json", str(tmp_path / "training.json")])
    card = ModelCard.load(adapter / "README.md")
    result = card.data.eval_results[0]
    assert (result.metric_type, result.metric_value, result.dataset_name) == ("safety_rate", 0.91, "HEx-PHI")
    assert card.data.model_name == "tiny-sails" and '"me/tiny-sails"' in card.text
    assert "**learning_rate:** 0.0002" in card.text and card.data.datasets == ["org/data"]


def test_local_base_model_is_not_linked(tmp_path, llama, planted_saes, selected_config):
    llama.name_or_path = str(tmp_path)  # a local folder, not a Hub id
    get_peft_model(llama, copy.deepcopy(selected_config)).save_pretrained(tmp_path / "adapter")
    card = build_card(tmp_path / "adapter")
    assert card.data.base_model is None and "huggingface.co/" + str(tmp_path) not in card.text
