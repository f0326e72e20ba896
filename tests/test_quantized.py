"""Quantized bases (QLoRA): the SAILS init as a state dict, computed at full precision and loaded into a 4-bit model.

The state-dict tests always run; the 4-bit ones need bitsandbytes (its CPU backend runs nf4 on this CPU).
"""

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer

from peft_sails import get_sails_state_dict, initialize_sails_weights
from peft_sails.offline import tiny_llama


def _lora_weights(model, adapter="default"):
    return {k: v.clone() for k, v in get_peft_model_state_dict(model, adapter_name=adapter).items() if ".lora_" in k}


def test_state_dict_equals_direct_init_and_leaves_model_as_it_was(tokenizer, selected_config):
    base = tiny_llama(tokenizer)
    config = copy.deepcopy(selected_config)
    state = get_sails_state_dict(base, config, show_progress=False)
    assert not any(isinstance(m, LoraLayer) for m in base.modules()) and not hasattr(base, "peft_config")
    assert all(p.requires_grad for p in base.parameters())
    assert config.subspace_stats["n_reader_modules"] == 20  # recorded as get_peft_model records them

    direct = get_peft_model(tiny_llama(tokenizer), copy.deepcopy(selected_config))
    expected = _lora_weights(direct)
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)

    lazy = get_peft_model(tiny_llama(tokenizer), copy.deepcopy(config), low_cpu_mem_usage=True)
    assert initialize_sails_weights(lazy, sails_state_dict=state) is None
    loaded = _lora_weights(lazy)
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)

    plain = get_peft_model(tiny_llama(tokenizer), config.stock_lora_config())  # stock peft loads it too
    assert not set_peft_model_state_dict(plain, state).unexpected_keys
    assert all(torch.equal(w, expected[k]) for k, w in _lora_weights(plain).items())

    # From a PeftModel: a temporary adapter, deleted afterwards; the adapter in place is untouched.
    with torch.no_grad():
        direct.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight.fill_(1.0)
    again = get_sails_state_dict(direct, show_progress=False)
    assert list(direct.peft_config) == ["default"] and all(torch.equal(again[k], expected[k]) for k in expected)
    assert torch.all(direct.base_model.model.model.layers[0].self_attn.q_proj.lora_B["default"].weight == 1)


def test_state_dict_mismatch_names_module_and_shapes(tokenizer, selected_config):
    state = get_sails_state_dict(tiny_llama(tokenizer), copy.deepcopy(selected_config), show_progress=False)
    wider = copy.deepcopy(selected_config)
    wider.r = 8
    lazy = get_peft_model(tiny_llama(tokenizer), wider, low_cpu_mem_usage=True)
    with pytest.raises(ValueError, match=r"layers\.0\.self_attn\.k_proj\.lora_A: the adapter has shape \(8, 64\), "
                                         r"the state dict \(4, 64\)"):
        initialize_sails_weights(lazy, sails_state_dict=state)
    assert all(m.lora_A["default"].weight.is_meta for m in lazy.modules() if isinstance(m, LoraLayer))  # unwritten

    lazy = get_peft_model(tiny_llama(tokenizer), copy.deepcopy(selected_config), low_cpu_mem_usage=True)
    partial = {k: v for k, v in state.items() if "layers.3.mlp.down_proj" not in k}
    with pytest.raises(ValueError, match=r"2 keys missing .*layers\.3\.mlp\.down_proj\.lora_A\.weight"):
        initialize_sails_weights(lazy, sails_state_dict=partial)
    assert all(m.lora_A["default"].weight.is_meta for m in lazy.modules() if isinstance(m, LoraLayer))


# ---------------------------------------------------------------- 4-bit (bitsandbytes)


@pytest.fixture()
def quantized_world(tokenizer, tmp_path):
    """A tiny Llama saved in a folder named like the planted SAEs' model; q/k/v non-square, norms far from 1."""
    bnb = pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=1,
        head_dim=32, tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, vocab_size=len(tokenizer)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layernorm" in name:
                param.uniform_(0.2, 4.0)
    folder = tmp_path / "tiny-llama"  # the SAEs' model name, so check_sae_model passes
    model.save_pretrained(folder)

    def load_4bit(compute_dtype=torch.float32):
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
        model_4bit = LlamaForCausalLM.from_pretrained(folder, quantization_config=quant, device_map="cpu")
        # bitsandbytes 0.50.2 on CPUs with AVX512-BF16 repacks the 4-bit weights at the first eval-mode forward
        # without grad, for an inference kernel with no backward (later training gets wrong gradients) whose
        # un-packing in state_dict() scrambles absmax when in_features > 64: keep the model in train mode.
        return model_4bit.train()

    return bnb, folder, load_4bit


def _batch(tokenizer, data):
    return tokenizer.apply_chat_template([r["messages"] for r in data[0].select(range(4))], return_tensors="pt",
                                         return_dict=True, padding=True)


@pytest.mark.parametrize("compute_dtype", [torch.float32, torch.bfloat16])
def test_qlora_workflow_with_full_precision_state_dict(quantized_world, tokenizer, data, selected_config, tmp_path,
                                                       compute_dtype):
    from peft import prepare_model_for_kbit_training
    from transformers import LlamaForCausalLM

    bnb, folder, load_4bit = quantized_world
    config = copy.deepcopy(selected_config)
    full = LlamaForCausalLM.from_pretrained(folder)
    state = get_sails_state_dict(full, config, show_progress=False)
    n_base_params = sum(p.numel() for p in full.parameters())
    del full

    model_4bit = prepare_model_for_kbit_training(load_4bit(compute_dtype), use_gradient_checkpointing=False)
    q_proj = model_4bit.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit) and q_proj.weight.dtype == torch.uint8
    packed = {n: p.detach().clone() for n, p in model_4bit.named_parameters() if p.dtype == torch.uint8}
    batch = _batch(tokenizer, data)
    with torch.no_grad():
        base_logits = model_4bit(**batch).logits

    peft_model = get_peft_model(model_4bit, copy.deepcopy(config), low_cpu_mem_usage=True)
    initialize_sails_weights(peft_model, sails_state_dict=state)
    loaded = _lora_weights(peft_model)
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    assert all(v.dtype == torch.float32 for v in loaded.values())  # as get_peft_model upcasts them, bf16 compute too
    k_a = peft_model.base_model.model.model.layers[1].self_attn.k_proj.lora_A["default"].weight
    assert k_a.shape == (4, 64) and peft_model.base_model.model.model.layers[1].self_attn.q_proj.out_features == 128
    stats = peft_model.peft_config["default"].subspace_stats
    assert stats["n_base_params"] == n_base_params  # counted at full precision, not on the packed 4-bit bytes
    with torch.no_grad():
        assert torch.equal(peft_model(**batch).logits, base_logits)

    # The gradients are those of a float32 model holding the dequantized weights (the test's reference only).
    reference = LlamaForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        for name, module in model_4bit.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):  # now the base_layer of a LoRA layer
                weight = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state)
                reference.get_submodule(name.replace(".base_layer", "")).weight.copy_(weight)
    reference = get_peft_model(reference, copy.deepcopy(config), low_cpu_mem_usage=True)
    initialize_sails_weights(reference, sails_state_dict=state)
    for m in (peft_model, reference):
        m(**batch, labels=batch["input_ids"]).loss.backward()
    grads = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert len(grads) == 56 and any(torch.count_nonzero(g) for g in grads.values())
    tolerance = 1e-5 if compute_dtype == torch.float32 else 5e-2
    assert all((p.grad - grads[n]).norm() <= tolerance * grads[n].norm()
               for n, p in peft_model.named_parameters() if p.grad is not None)
    peft_model.zero_grad()

    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(2):
        loss = peft_model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    trained = _lora_weights(peft_model)
    b_key = "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight"
    assert torch.count_nonzero(state[b_key]) == 0 and torch.count_nonzero(trained[b_key]) > 0
    assert all(torch.equal(p, packed[n.replace("base_layer.", "").replace("base_model.model.", "")])
               for n, p in peft_model.named_parameters() if p.dtype == torch.uint8)  # base weights untouched

    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_4bit(compute_dtype), tmp_path / "adapter")  # plain LoRA, stock peft
    assert reloaded.peft_config["default"].peft_type == "LORA"
    again = _lora_weights(reloaded)
    assert again.keys() == trained.keys() and all(torch.equal(again[k], trained[k]) for k in trained)


def test_direct_init_on_4bit_model_matches_full_precision(quantized_world, selected_config):
    from transformers import LlamaForCausalLM

    _, folder, load_4bit = quantized_world
    state = get_sails_state_dict(LlamaForCausalLM.from_pretrained(folder), copy.deepcopy(selected_config),
                                 show_progress=False)
    # SAILS reads only RMSNorm weights (float in a 4-bit model) and the SAEs: get_peft_model works on the 4-bit base.
    peft_model = get_peft_model(load_4bit(torch.bfloat16), copy.deepcopy(selected_config))
    direct = _lora_weights(peft_model)
    assert direct.keys() == state.keys() and all(torch.equal(direct[k], state[k]) for k in state)
