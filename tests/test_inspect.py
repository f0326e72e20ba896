"""`peft-sails inspect`: subspace shares of constructed updates, a planted feature change, and the CLI end to end."""

import copy
import json

import pytest
import torch
from conftest import D_SAE, HUB_CACHE, LAYERS, sails_config
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from peft_sails.inspect import cli, feature_shifts, inspect_adapter, prompt_rows
from peft_sails.offline import make_sae, save_sae_to_hub_cache, tiny_llama, toy_pairs

PNG = b"\x89PNG\r\n\x1a\n"
READERS_AND_WRITERS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _lora_layers(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]


def _structured_norms(model):
    """RMSNorm weights far from 1 (0.2..4), so the reader basis differs from the residual-stream basis."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.2, 4.0)
            layer.post_attention_layernorm.weight.uniform_(0.2, 4.0)


@torch.no_grad()
def _sails_like_trained(model, seed=0):
    """A SAILS-initialised model whose update stays inside the subspace: the factor holding the basis is mixed by a
    random r x r matrix, the zero factor becomes random (as training would make them)."""
    g = torch.Generator().manual_seed(seed)
    for name, module in _lora_layers(model):
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        mix = torch.randn(a.shape[0], a.shape[0], generator=g)
        if name.endswith(("o_proj", "down_proj")):  # writers: lora_B holds the basis
            b.copy_(b @ mix)
            a.copy_(torch.randn(a.shape, generator=g))
        else:
            a.copy_(mix @ a)
            b.copy_(torch.randn(b.shape, generator=g))
    return model


def test_update_built_inside_the_subspace_reports_full_share(tokenizer, selected_config):
    model = tiny_llama(tokenizer)
    _structured_norms(model)
    peft_model = _sails_like_trained(get_peft_model(model, copy.deepcopy(selected_config)))
    report = inspect_adapter(peft_model, tokenizer, selected_config, show_progress=False)
    assert len(report.modules) == 4 * 7 and not report.skipped
    assert all(m.share > 0.9999 for m in report.modules)
    assert all(max(m.angles) < 0.5 for m in report.modules)  # the learned factor still spans the initial basis
    assert report.summary["all"]["mean_baseline"] == pytest.approx(4 / 64)
    assert report.summary["all"]["mean_random_share"] < 0.3
    # Shares are measured in residual-stream coordinates: an adapter written with the old 'image' rule (rows s * U)
    # reads s^2 * U, which lies outside the subspace, and inspect says so.
    image = copy.deepcopy(selected_config)
    image.norm_mapping = "image"
    model = tiny_llama(tokenizer)
    _structured_norms(model)
    shares = inspect_adapter(_sails_like_trained(get_peft_model(model, image)), tokenizer, image,
                             show_progress=False).modules
    assert max(m.share for m in shares if m.role == "reader") < 0.9
    assert min(m.share for m in shares if m.role == "writer") > 0.9999  # a Llama writer has no post-norm


def test_random_lora_update_reports_the_random_baseline(tokenizer, selected_config):
    peft_model = get_peft_model(tiny_llama(tokenizer), LoraConfig(r=4, target_modules=READERS_AND_WRITERS))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, module in _lora_layers(peft_model):
            module.lora_B["default"].weight.copy_(torch.randn(module.lora_B["default"].weight.shape, generator=g))
    summary = inspect_adapter(peft_model, tokenizer, selected_config, show_progress=False).summary["all"]
    assert summary["n_modules"] == 28
    assert summary["mean_share"] == pytest.approx(4 / 64, abs=0.025)
    assert summary["mean_random_share"] == pytest.approx(4 / 64, abs=0.025)
    assert summary["mean_principal_angle"] > 60


def test_untrained_sails_adapter_has_no_update_to_measure(llama, tokenizer, selected_config):
    report = inspect_adapter(get_peft_model(llama, copy.deepcopy(selected_config)), tokenizer, selected_config,
                             show_progress=False)
    assert all(m.share is None and m.delta_norm == 0 for m in report.modules)
    assert report.summary["all"] == {"n_modules": 0}
    assert all(max(m.angles) < 1e-3 for m in report.modules)  # lora_A / lora_B hold the basis itself


PLANTED, OTHER_SELECTED = 123, 5


@pytest.fixture(scope="module")
def moving_adapter(tokenizer):
    """A rank-1 LoRA on layer 1's down_proj that adds `c (v·x) e` to the residual stream right before layer 1's
    SAE reads it, and that SAE (saved as local-org/inspect-saes) with feature PLANTED reading `e`."""
    g = torch.Generator().manual_seed(3)
    model = tiny_llama(tokenizer)
    peft_model = get_peft_model(model, LoraConfig(r=1, target_modules=["down_proj"], layers_to_transform=[1]))
    e = torch.nn.functional.normalize(torch.randn(64, generator=g), dim=0)
    module = peft_model.get_submodule("base_model.model.model.layers.1.mlp.down_proj")
    with torch.no_grad():
        module.lora_B["default"].weight.copy_(20 * e[:, None])
        module.lora_A["default"].weight.copy_(torch.randn(1, 128, generator=g))
    w_dec = torch.nn.functional.normalize(torch.randn(D_SAE, 64, generator=g), dim=1)
    w_dec[PLANTED] = e
    sae = make_sae(w_dec, "blocks.1.hook_resid_post", "tiny-llama")
    sae.cfg.metadata.neuronpedia_id = "tiny-llama/1-res-256"
    save_sae_to_hub_cache(sae, "local-org/inspect-saes", "layer_1", HUB_CACHE)
    config = sails_config(sae_release="local-org/inspect-saes", sae_ids={1: "layer_1"},
                          features={1: [{"id": PLANTED, "delta": 1.0, "rho": 1.0},
                                        {"id": OTHER_SELECTED, "delta": 0.5, "rho": 1.0}]})
    return peft_model, config


def test_planted_feature_change_is_ranked_first(moving_adapter, tokenizer, data):
    peft_model, config = moving_adapter
    aligned, _, benign = data
    prompt_sets = {"harmful": aligned.select(range(16)), "benign": [r["messages"][0]["content"] for r in benign][:16]}
    for scope in ("last_prompt", "prompt"):
        shifts = feature_shifts(peft_model, tokenizer, config, prompt_sets, top_n=5, token_scope=scope,
                                show_progress=False)
        for prompt_set in shifts:
            (layer,) = prompt_set.layers
            first = layer.top[0]
            assert (first.feature, first.selected) == (PLANTED, True)
            assert first.change > 0 and not any(s.selected for s in layer.top[1:])
            changes = [abs(s.change) for s in layer.top]
            assert changes == sorted(changes, reverse=True) and changes[-1] > 0
            assert first.url == f"https://www.neuronpedia.org/tiny-llama/1-res-256/{PLANTED}"
            assert layer.n_tokens == 16 if scope == "last_prompt" else layer.n_tokens > 16
            assert layer.selected_change_share > 2 * layer.selected_baseline
    assert peft_model.training  # evaluated in eval mode, then put back in the mode it was in
    with pytest.raises(ValueError, match="token_scope"):
        feature_shifts(peft_model, tokenizer, config, prompt_sets, token_scope="response")


def test_adapter_off_means_no_feature_moves(moving_adapter, tokenizer, data):
    peft_model, config = moving_adapter
    with torch.no_grad():
        module = peft_model.get_submodule("base_model.model.model.layers.1.mlp.down_proj")
        saved = module.lora_B["default"].weight.clone()
        module.lora_B["default"].weight.zero_()
        try:
            (shifts,) = feature_shifts(peft_model, tokenizer, config, {"harmful": data[0].select(range(8))},
                                       show_progress=False)
        finally:
            module.lora_B["default"].weight.copy_(saved)
    assert all(s.change == 0 for s in shifts.layers[0].top) and shifts.layers[0].selected_change_share is None


def test_prompt_rows_accept_strings_prompts_and_chats(tokenizer):
    chat = [{"role": "user", "content": "how do i forge a passport"}, {"role": "assistant", "content": "no ."}]
    rows = prompt_rows(["what do bees make", {"prompt": "name a primary colour"}, {"messages": chat}], tokenizer)
    assert [r["prompt"] for r in rows] == [[{"role": "user", "content": "what do bees make"}],
                                           [{"role": "user", "content": "name a primary colour"}], chat[:1]]
    with pytest.raises(ValueError, match="'prompt' or 'messages'"):
        prompt_rows([{"text": "hi"}], tokenizer, "odd")


@pytest.fixture()
def saved_world(tmp_path, tokenizer, selected_config):
    """On disk: the base model (named like the SAEs' model), a SAILS adapter with an update inside its subspace,
    a plain LoRA adapter, prompt sets (jsonl) and the harmful request/refusal/compliance data."""
    base = tmp_path / "tiny-llama"
    tiny_llama(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    _sails_like_trained(get_peft_model(tiny_llama(tokenizer), copy.deepcopy(selected_config))).save_pretrained(
        tmp_path / "sails")
    lora = get_peft_model(tiny_llama(tokenizer), LoraConfig(r=4, target_modules=READERS_AND_WRITERS))
    with torch.no_grad():
        for _, module in _lora_layers(lora):
            torch.nn.init.normal_(module.lora_B["default"].weight)
    lora.save_pretrained(tmp_path / "lora")
    pairs = toy_pairs(48, 0)
    pairs.to_json(tmp_path / "harmful" / "train.jsonl")
    Dataset.from_list([{"prompt": "what do bees make"}, {"prompt": "name a primary colour"}]).to_json(
        tmp_path / "benign.jsonl")
    return tmp_path


def test_cli_on_a_sails_adapter_writes_report_json_and_plots(saved_world, capsys):
    out = saved_world / "report"
    cli([str(saved_world / "sails"), "--base", str(saved_world / "tiny-llama"), "--output_dir", str(out),
         "--prompts", f"harmful={saved_world / 'harmful'}", f"benign={saved_world / 'benign.jsonl'}",
         "--max_prompts", "12", "--top_n", "5", "--quiet"])
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["all"]["mean_share"] > 0.9999 and report["subspace"]["subspace_dim"] == 4
    assert report["subspace_source"] == "the adapter's own sails_config.json"
    assert [s["name"] for s in report["prompt_sets"]] == ["harmful", "benign"]
    assert [s["n_prompts"] for s in report["prompt_sets"]] == [12, 2]
    assert [layer["layer"] for layer in report["prompt_sets"][0]["layers"]] == list(LAYERS)
    for png in ("subspace_share.png", "features_harmful.png", "features_benign.png"):
        assert (out / png).read_bytes().startswith(PNG)
    markdown = (out / "report.md").read_text()
    assert "| all | 28 | 100.0% |" in markdown and "![top features on benign](features_benign.png)" in markdown
    assert "reader: 100.0% of ||ΔW||²" in capsys.readouterr().out


def test_cli_on_a_plain_lora_adapter_selects_or_borrows_the_subspace(saved_world):
    lora, base = str(saved_world / "lora"), str(saved_world / "tiny-llama")
    with pytest.raises(SystemExit, match="plain LoRA adapter"):
        cli([lora, "--base", base, "--quiet"])
    borrowed, selected = saved_world / "borrowed", saved_world / "selected"
    cli([lora, "--base", base, "--subspace_from", str(saved_world / "sails"), "--output_dir", str(borrowed), "--quiet"])
    cli([lora, "--base", base, "--sae", "local-org/tiny-llama-saes", "--sae_ids", "1=layer_1", "2=layer_2",
         "--harmful_dataset", str(saved_world / "harmful"), "--top_k", "8", "--output_dir", str(selected), "--quiet"])
    reports = [json.loads((folder / "report.json").read_text()) for folder in (borrowed, selected)]
    for report in reports:
        assert report["n_features"] == {"1": 8, "2": 8} and not report["prompt_sets"]
        assert report["summary"]["all"]["mean_share"] == pytest.approx(4 / 64, abs=0.04)
    # features selected here on the data the SAILS adapter's were selected on: the same subspace, the same numbers
    assert reports[0]["modules"] == reports[1]["modules"]
    assert "selected here on" in reports[1]["subspace_source"]
    assert "feature view skipped" in (borrowed / "report.md").read_text()
