"""Stage 3 through `get_peft_model`: step-0 identity, adapters inside the subspace, two-step init, errors."""

import copy
import dataclasses
import math

import pytest
import torch
from conftest import LAYERS, in_span, sails_config
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from peft_sails import initialize_sails_weights


def _decoder_rows(config, saes):
    return torch.cat([saes[layer].W_dec[[f["id"] for f in config.features[layer]]].detach() for layer in LAYERS])


def _lora(model, name, adapter="default"):
    module = model.get_submodule(name)
    return module.lora_A[adapter].weight.detach(), module.lora_B[adapter].weight.detach()


def _logits(model, tokenizer, data):
    batch = tokenizer.apply_chat_template([r["messages"] for r in data[0].select(range(4))], return_tensors="pt",
                                          return_dict=True, padding=True)
    with torch.no_grad():
        return model(**batch).logits


def test_step0_outputs_equal_base(llama, tokenizer, data, selected_config):
    base = _logits(llama, tokenizer, data)
    peft_model = get_peft_model(llama, copy.deepcopy(selected_config))
    assert torch.equal(_logits(peft_model, tokenizer, data), base)
    stats = peft_model.peft_config["default"].subspace_stats
    assert stats["n_reader_modules"] == 4 * 5 and stats["n_writer_modules"] == 4 * 2


def test_readers_and_writers_lie_in_feature_span(llama, selected_config, planted_saes):
    with torch.no_grad():  # RMSNorm weights far from 1, so the mapping through them is visible
        for layer in llama.model.layers:
            layer.input_layernorm.weight.uniform_(0.2, 4.0)
    rows = _decoder_rows(selected_config, planted_saes)
    scale = llama.model.layers[0].input_layernorm.weight.detach()
    peft_model = get_peft_model(llama, copy.deepcopy(selected_config))
    a, b = _lora(peft_model, "base_model.model.model.layers.0.self_attn.q_proj")
    assert torch.count_nonzero(b) == 0
    # q_proj sees s * h / rms(h): the residual-stream directions its adapter reads are the rows of A * s
    assert in_span(a * scale, rows) and not in_span(a, rows)
    assert torch.allclose(a.norm(dim=1), torch.full((4,), 1 / math.sqrt(3)), atol=1e-5)
    a, b = _lora(peft_model, "base_model.model.model.layers.3.mlp.down_proj")  # a writer
    assert torch.count_nonzero(a) == 0 and in_span(b.T, rows)


def test_default_lora_init_is_not_in_span(llama, selected_config, planted_saes):
    rows = _decoder_rows(selected_config, planted_saes)
    peft_model = get_peft_model(llama, LoraConfig(r=4, target_modules=["q_proj"]))
    a, _ = _lora(peft_model, "base_model.model.model.layers.0.self_attn.q_proj")
    assert not in_span(a, rows, tol=1e-2)


def test_norm_mapping_off_and_lora_writers(llama, selected_config, planted_saes):
    rows = _decoder_rows(selected_config, planted_saes)
    config = copy.deepcopy(selected_config)
    config.norm_mapping, config.writer_init, config.a_scale = False, "lora", 2.0
    peft_model = get_peft_model(llama, config)
    a, _ = _lora(peft_model, "base_model.model.model.layers.2.mlp.up_proj")
    assert in_span(a, rows) and torch.allclose(a.norm(dim=1), torch.full((4,), 2.0), atol=1e-5)
    a, b = _lora(peft_model, "base_model.model.model.layers.2.self_attn.o_proj")
    assert torch.count_nonzero(b) == 0 and torch.count_nonzero(a) == a.numel()  # PEFT's default init


def test_init_is_deterministic(tokenizer, selected_config):
    from peft_sails.offline import tiny_llama

    states = [get_peft_model(tiny_llama(tokenizer), copy.deepcopy(selected_config)).state_dict() for _ in range(2)]
    lora_keys = [k for k in states[0] if "lora_" in k]
    assert lora_keys and all(torch.equal(states[0][k], states[1][k]) for k in lora_keys)


def test_two_step_init_with_low_cpu_mem_usage(tokenizer, selected_config):
    from peft_sails.offline import tiny_llama

    eager = get_peft_model(tiny_llama(tokenizer), copy.deepcopy(selected_config))
    lazy = get_peft_model(tiny_llama(tokenizer), copy.deepcopy(selected_config), low_cpu_mem_usage=True)
    assert all(m.lora_A["default"].weight.is_meta for m in lazy.modules() if isinstance(m, LoraLayer))
    initialize_sails_weights(lazy)
    eager_sd, lazy_sd = eager.state_dict(), lazy.state_dict()
    assert all(torch.equal(eager_sd[k], lazy_sd[k]) for k in eager_sd if "lora_" in k)


def test_missing_features_says_how_to_fix(llama):
    with pytest.raises(ValueError, match="select_features"):
        get_peft_model(llama, sails_config())
    assert not any(isinstance(m, LoraLayer) for m in llama.modules())  # the model was left untouched


def _gemma2_selected(gemma_world, tokenizer, data, **overrides):
    from peft_sails import select_features
    from peft_sails.sae_loading import load_sae

    config, model = gemma_world
    config = select_features(model, tokenizer, dataclasses.replace(config, **overrides) if overrides else config, data[0],
                             data[1], show_progress=False)
    rows = load_sae(config.sae_release, "layer_1").W_dec[[f["id"] for f in config.features[1]]].detach()
    return config, model, rows


def test_gemma2_step0_and_norm_mapping(gemma_world, tokenizer, data):
    config, model, rows = _gemma2_selected(gemma_world, tokenizer, data)
    base = _logits(model, tokenizer, data)
    peft_model = get_peft_model(model, config)
    assert torch.equal(_logits(peft_model, tokenizer, data), base)
    layer = model.model.layers[1]
    scale = 1 + layer.pre_feedforward_layernorm.weight.detach()  # Gemma's RMSNorm multiplies by 1 + w
    assert scale.min() < 0.5 and scale.max() > 2  # far from 1, or the test could not tell the rules apart
    a, _ = _lora(peft_model, "base_model.model.model.layers.1.mlp.up_proj")
    assert in_span(a * scale, rows, tol=1e-3) and not in_span(a, rows, tol=1e-3)
    # The adapter's input depends only on the residual stream's component inside the subspace: a residual
    # direction v orthogonal to every selected decoder row reaches up_proj as s * v, and lora_A reads nothing of it.
    span = torch.linalg.svd(rows.double(), full_matrices=False)[2]
    v = torch.randn(8, rows.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v -= (v @ span.T) @ span
    assert (a.double() @ (v * scale).T).abs().max() < 1e-4 * a.norm() * v.norm(dim=1).max()
    _, b = _lora(peft_model, "base_model.model.model.layers.1.self_attn.o_proj")
    assert in_span(b.T, rows / (1 + layer.post_attention_layernorm.weight.detach()), tol=1e-3)
    peft_model.unload()


@pytest.mark.parametrize("rule, legacy", [("image", True), ("none", False)])
def test_other_norm_mapping_rules(gemma_world, tokenizer, data, rule, legacy):
    config, model, rows = _gemma2_selected(gemma_world, tokenizer, data, norm_mapping=legacy)
    assert config.norm_mapping == rule  # a boolean from a 0.1 sidecar names the rule it was written with
    peft_model = get_peft_model(model, config)
    scale = 1 + model.model.layers[1].pre_feedforward_layernorm.weight.detach()
    a, _ = _lora(peft_model, "base_model.model.model.layers.1.mlp.up_proj")
    assert in_span(a, rows * scale if rule == "image" else rows, tol=1e-3)
    assert not in_span(a * scale, rows, tol=1e-3)  # reads s^2 * U or s * U: not the SAE subspace
    peft_model.unload()


def test_selection_data_named_in_config(tokenizer, data, planted_saes, selected_config, tmp_path):
    from peft_sails.offline import tiny_llama

    data[0].save_to_disk(tmp_path / "aligned")
    data[1].save_to_disk(tmp_path / "unaligned")
    config = sails_config(aligned_dataset=str(tmp_path / "aligned"), unaligned_dataset=str(tmp_path / "unaligned"))
    model = tiny_llama(tokenizer)
    with pytest.raises(ValueError, match="tokenizer_name_or_path"):
        model.config._name_or_path = ""
        get_peft_model(model, copy.deepcopy(config))
    model.config._name_or_path = "local-org/tiny-llama"
    tokenizer.save_pretrained(tmp_path / "tok")
    config.tokenizer_name_or_path = str(tmp_path / "tok")
    peft_model = get_peft_model(model, config)
    assert peft_model.peft_config["default"].features == selected_config.features


def test_bf16_model_gets_exact_float32_basis(tokenizer, data, planted_saes):
    from peft_sails import select_features
    from peft_sails.offline import tiny_llama

    model = tiny_llama(tokenizer).to(torch.bfloat16)
    config = select_features(model, tokenizer, sails_config(), data[0], data[1], show_progress=False)
    base = _logits(model, tokenizer, data)
    peft_model = get_peft_model(model, config)
    assert torch.equal(_logits(peft_model, tokenizer, data), base)
    a, _ = _lora(peft_model, "base_model.model.model.layers.1.self_attn.k_proj")
    assert a.dtype == torch.float32
    assert torch.allclose(a @ a.T, torch.eye(4) / 3, atol=1e-6)  # not the bf16 rounding of the basis (~1e-3 off)


def test_add_adapter_initialises_the_second_adapter(llama, selected_config, planted_saes):
    peft_model = get_peft_model(llama, copy.deepcopy(selected_config))
    second = copy.deepcopy(selected_config)
    second.features = {layer: feats[:2] for layer, feats in second.features.items()}
    second.subspace_fill = "random"
    peft_model.add_adapter("second", second)
    rows = _decoder_rows(second, planted_saes)
    a, b = _lora(peft_model, "base_model.model.model.layers.0.self_attn.v_proj", adapter="second")
    assert torch.count_nonzero(b) == 0 and a.dtype == torch.float32
    assert torch.allclose(a @ a.T, torch.eye(4) / 3, atol=1e-6)
    n_pca = peft_model.peft_config["second"].subspace_stats["n_principal_rows"]
    assert 0 < n_pca < 4 and in_span(a[:n_pca], rows) and not in_span(a, rows)


def test_mistral_step0(tokenizer, data, planted_saes):
    from transformers import MistralConfig, MistralForCausalLM

    from peft_sails import select_features

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                             num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tokenizer)))
    # the planted SAEs name tiny-llama: check_sae_model=False is the documented way to use them anyway
    config = select_features(model, tokenizer, sails_config(check_sae_model=False), data[0], data[1],
                             show_progress=False)
    base = _logits(model, tokenizer, data)
    peft_model = get_peft_model(model, config)
    assert torch.equal(_logits(peft_model, tokenizer, data), base)
    assert peft_model.peft_config["default"].subspace_stats["n_reader_modules"] == 20
