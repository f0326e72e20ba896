"""Two-sided subspace (experimental): readers start on request-side features (harmful vs benign prompts at the last
prompt token), writers on response-side ones (refusal vs compliance)."""

import copy
import json

import pytest
import torch
from conftest import HUB_CACHE, LAYERS, in_span, planted_sae, sails_config, scored_residuals
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from peft_sails import (SAILSConfig, get_sails_state_dict, initialize_sails_weights, select_features,
                        select_reader_features)
from peft_sails.initialization import compute_sails_subspace
from peft_sails.offline import make_sae, save_sae_to_hub_cache, tiny_llama

REPO = "local-org/two-sided-saes"
READER_IDS = {120: 6.0, 121: 3.0}  # planted: fire only at the last prompt token of harmful requests
INPUT_IDS = torch.tensor([[2, 5, 9, 11, 14, 20, 7, 6, 30, 31, 40]])


def _config(**overrides) -> SAILSConfig:
    return sails_config(sae_release=REPO, **overrides)


@pytest.fixture(scope="module")
def two_sided_saes(tokenizer, data):
    """conftest's planted SAEs (response-side features 42, 17, 99, 7, 200) plus READER_IDS, which fire on the last
    prompt token of harmful requests only: never on benign requests, nor on any response token."""
    model = tiny_llama(tokenizer)
    aligned, unaligned, benign = data
    saes = {}
    for layer in LAYERS:
        sae = planted_sae(model, tokenizer, data, layer)
        w_dec, w_enc, b_enc = (p.detach().clone() for p in (sae.W_dec, sae.W_enc, sae.b_enc))
        last = sails_config(token_scope="last_prompt")
        harmful = scored_residuals(model, tokenizer, aligned, layer, last)
        silent = torch.cat([scored_residuals(model, tokenizer, benign, layer, last),
                            scored_residuals(model, tokenizer, aligned, layer, sails_config()),
                            scored_residuals(model, tokenizer, unaligned, layer, sails_config())])
        e = torch.nn.functional.normalize(harmful.mean(0) - silent.mean(0), dim=0)
        threshold = (silent @ e).max() + 1e-3
        assert (harmful @ e > threshold).float().mean() > 0.2, "toy data too weak to plant a request feature"
        for fid, strength in READER_IDS.items():
            w_enc[:, fid], b_enc[fid], w_dec[fid] = e * strength, -threshold * strength, e
        saes[layer] = make_sae(w_dec, f"blocks.{layer}.hook_resid_post", "tiny-llama", w_enc=w_enc, b_enc=b_enc)
        save_sae_to_hub_cache(saes[layer], REPO, f"layer_{layer}", HUB_CACHE)
    return saes


@pytest.fixture(scope="module")
def two_sided_config(tokenizer, data, two_sided_saes):
    aligned, unaligned, benign = data
    model = tiny_llama(tokenizer)
    config = select_features(model, tokenizer, _config(), aligned, unaligned, show_progress=False)
    return select_reader_features(model, tokenizer, config, aligned, benign, show_progress=False)


def _rows(config, saes, field):
    return torch.cat([saes[layer].W_dec[[f["id"] for f in getattr(config, field)[layer]]].detach() for layer in LAYERS])


def _lora(model, name):
    module = model.get_submodule(f"base_model.model.model.layers.{name}")
    return module.lora_A["default"].weight.detach(), module.lora_B["default"].weight.detach()


def _same_span(vectors, basis, tol=1e-4):
    """Whether the rows of `vectors` and of the orthonormal `basis` span the same subspace."""
    q = torch.linalg.qr(vectors.double().T)[0]
    return torch.allclose(q @ q.T, basis.double().T @ basis.double(), atol=tol)


def _logits(model):
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


def test_reader_features_are_the_request_side_ones(two_sided_config):
    for layer in LAYERS:
        readers = [f["id"] for f in two_sided_config.reader_features[layer]]
        writers = [f["id"] for f in two_sided_config.features[layer]]
        assert set(READER_IDS) <= set(readers) and not set(READER_IDS) & set(writers)
        assert {42, 17, 99, 7} <= set(writers)  # the response-side plants, as with one-sided selection
        assert all(f["delta"] > 0 and f["rho"] == 1.0 for f in two_sided_config.reader_features[layer]
                   if f["id"] in READER_IDS)  # delta = harmful - benign
    assert two_sided_config.reader_token_scope == "last_prompt" and two_sided_config.token_scope == "response"


def test_readers_and_writers_start_in_their_own_bases(tokenizer, two_sided_config, two_sided_saes):
    model = tiny_llama(tokenizer)
    with torch.no_grad():  # RMSNorm weights far from 1, so the mapping through them is visible
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.2, 4.0)
            layer.post_attention_layernorm.weight.uniform_(0.2, 4.0)
    base = _logits(model)
    subspace, _ = compute_sails_subspace(model, two_sided_config, show_progress=False)
    reader_rows, writer_rows = _rows(two_sided_config, two_sided_saes, "reader_features"), _rows(
        two_sided_config, two_sided_saes, "features")
    peft_model = get_peft_model(model, copy.deepcopy(two_sided_config))
    assert torch.equal(_logits(peft_model), base)  # step 0: the base model
    for name, norm in (("0.self_attn.q_proj", "input_layernorm"), ("2.mlp.up_proj", "post_attention_layernorm")):
        a, b = _lora(peft_model, name)
        scale = getattr(model.model.layers[int(name[0])], norm).weight.detach()
        assert torch.count_nonzero(b) == 0
        # the residual-stream directions a reader reads are the rows of A * s: exactly the reader basis
        assert _same_span(a * scale, subspace.readers.basis) and in_span(a * scale, reader_rows)
        assert not in_span(a * scale, writer_rows, tol=1e-2)
    a, b = _lora(peft_model, "3.mlp.down_proj")  # a writer: lora_B's columns span the writer basis
    assert torch.count_nonzero(a) == 0 and _same_span(b.T, subspace.basis) and in_span(b.T, writer_rows)
    assert not in_span(b.T, reader_rows, tol=1e-2)
    stats = peft_model.peft_config["default"].subspace_stats
    assert stats["subspace_dim"] == 4 and stats["n_reader_modules"] == 20 and stats["n_writer_modules"] == 8
    assert stats["readers"]["subspace_dim"] == 4 and set(stats["readers"]["per_layer"]) == {"1", "2"}
    assert 0 <= stats["reader_writer_overlap"] < 0.9


def test_writers_match_the_one_sided_adapter(tokenizer, two_sided_config, two_sided_saes):
    """reader_features change the readers only; writer_init='lora' keeps PEFT's init for the writers."""
    one_sided = copy.deepcopy(two_sided_config)
    one_sided.reader_features = None
    states = {}
    for key, config in (("one", one_sided), ("two", two_sided_config), ("lora", two_sided_config)):
        config = copy.deepcopy(config)
        config.writer_init = "basis" if key != "lora" else "lora"
        torch.manual_seed(0)
        states[key] = get_peft_model(tiny_llama(tokenizer), config).state_dict()
    writer_keys = [k for k in states["one"] if "lora_" in k and ("o_proj" in k or "down_proj" in k)]
    reader_keys = [k for k in states["one"] if "lora_A" in k and "q_proj" in k]
    assert all(torch.equal(states["one"][k], states["two"][k]) for k in writer_keys)
    assert not any(torch.equal(states["one"][k], states["two"][k]) for k in reader_keys)
    assert all(torch.equal(states["two"][k], states["lora"][k]) for k in reader_keys)
    assert all(torch.count_nonzero(states["lora"][k]) == states["lora"][k].numel()
               for k in writer_keys if "lora_A" in k)  # PEFT's default init


def test_state_dict_and_two_step_init_honour_reader_features(tokenizer, two_sided_config, two_sided_saes):
    eager = get_peft_model(tiny_llama(tokenizer), copy.deepcopy(two_sided_config))
    lazy = get_peft_model(tiny_llama(tokenizer), copy.deepcopy(two_sided_config), low_cpu_mem_usage=True)
    initialize_sails_weights(lazy)
    config = copy.deepcopy(two_sided_config)
    state = get_sails_state_dict(tiny_llama(tokenizer), config, show_progress=False)
    eager_sd, lazy_sd = eager.state_dict(), lazy.state_dict()
    assert all(torch.equal(eager_sd[k], lazy_sd[k]) for k in eager_sd if "lora_" in k)
    assert all(torch.equal(eager_sd[k.replace(".weight", ".default.weight")], v) for k, v in state.items())
    assert config.subspace_stats["readers"] == eager.peft_config["default"].subspace_stats["readers"]


def test_save_and_reload(tmp_path, tokenizer, two_sided_config, two_sided_saes):
    base_dir = tmp_path / "tiny-llama"
    tiny_llama(tokenizer).save_pretrained(base_dir)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), copy.deepcopy(two_sided_config))
    with torch.no_grad():  # as after training
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    peft_model.save_pretrained(tmp_path / "adapter")
    sidecar = json.loads((tmp_path / "adapter" / "sails_config.json").read_text())
    assert sidecar["reader_features"]["1"] == two_sided_config.reader_features[1]
    assert sidecar["reader_token_scope"] == "last_prompt" and "readers" in sidecar["subspace_stats"]
    loaded = SAILSConfig.from_pretrained(str(tmp_path / "adapter"))
    assert loaded.reader_features == two_sided_config.reader_features and loaded.features == two_sided_config.features
    card = (tmp_path / "adapter" / "README.md").read_text()
    top = two_sided_config.reader_features[1][0]
    assert "## Reader features (two-sided subspace, experimental)" in card and "Δ (harmful − benign)" in card
    assert f"| 1 | {top['id']} | {top['delta']:+.4g} |" in card and "two-sided (experimental)" in card
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(tmp_path / "adapter"))
    assert torch.equal(_logits(plain), _logits(peft_model))


def test_selection_data_named_in_config(tokenizer, data, two_sided_config, tmp_path):
    for name, dataset in zip(("aligned", "unaligned", "benign"), data):
        dataset.save_to_disk(tmp_path / name)
    tokenizer.save_pretrained(tmp_path / "tok")
    config = _config(aligned_dataset=str(tmp_path / "aligned"), unaligned_dataset=str(tmp_path / "unaligned"),
                     benign_dataset=str(tmp_path / "benign"), tokenizer_name_or_path=str(tmp_path / "tok"))
    peft_model = get_peft_model(tiny_llama(tokenizer), config)
    selected = peft_model.peft_config["default"]
    assert selected.features == two_sided_config.features
    assert selected.reader_features == two_sided_config.reader_features
    # features already selected: only the missing reader side is selected from the named data
    config = _config(aligned_dataset=str(tmp_path / "aligned"), unaligned_dataset=str(tmp_path / "unaligned"),
                     benign_dataset=str(tmp_path / "benign"), tokenizer_name_or_path=str(tmp_path / "tok"),
                     features={1: two_sided_config.features[1]})
    peft_model = get_peft_model(tiny_llama(tokenizer), config)
    assert list(peft_model.peft_config["default"].features) == [1]
    assert peft_model.peft_config["default"].reader_features == two_sided_config.reader_features


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"reader_features": {7: []}}, r"`reader_features` has layers \[7\] that are not in `sae_ids` \[1, 2\]: add "),
        ({"reader_token_scope": "decision"}, "`reader_token_scope` must be one of"),
        ({"benign_dataset": "org/benign"}, "`benign_dataset` needs `aligned_dataset`.*Name all three"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_bad_reader_features_and_data(llama, tokenizer, data, two_sided_config, two_sided_saes):
    config = copy.deepcopy(two_sided_config)
    config.reader_features = {1: [{"id": 999, "delta": 0.1, "rho": 1.0}]}
    with pytest.raises(ValueError, match="id 999 of `reader_features` at layer 1 .*run select_reader_features"):
        get_peft_model(llama, config)
    config.reader_features = {}
    with pytest.raises(ValueError, match="`reader_features` selects no feature.*select_reader_features"):
        get_peft_model(llama, config)
    from datasets import Dataset

    with pytest.raises(ValueError, match="The benign selection dataset is empty"):
        select_reader_features(llama, tokenizer, two_sided_config, data[0], Dataset.from_list([]), show_progress=False)


def test_inspect_measures_readers_against_the_reader_basis(tokenizer, two_sided_config, two_sided_saes):
    from peft_sails.inspect import inspect_adapter

    peft_model = get_peft_model(tiny_llama(tokenizer), copy.deepcopy(two_sided_config))
    with torch.no_grad():  # as after training: the zero factor of each module moves, the basis factor stays
        for name, param in peft_model.named_parameters():
            if "lora_" in name and not param.any():
                param.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    report = inspect_adapter(peft_model, tokenizer, two_sided_config, show_progress=False)
    assert len(report.modules) == 28 and all(abs(m.share - 1) < 1e-6 for m in report.modules)


def test_docs_snippet_runs(tokenizer, data, two_sided_saes):
    """The first snippet of docs/two-sided.md, on the tiny offline world."""
    from pathlib import Path

    text = (Path(__file__).parents[1] / "docs" / "two-sided.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    namespace = {"model": tiny_llama(tokenizer), "tokenizer": tokenizer, "config": _config(),
                 "refusals": data[0], "compliances": data[1], "benign_chats": data[2]}
    exec(snippet, namespace)
    assert namespace["config"].reader_features and namespace["stats"]["readers"]["subspace_dim"] == 4
