"""Reliability: more bad inputs, atomic saves, exact round trips and resumes, memory parity with LoRA, safety of
what is loaded. (The basic bad inputs are in test_errors.py.)"""

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import sails_config
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

import peft_sails
from peft_sails import SAILSConfig, initialize_sails_weights, select_features
from peft_sails.offline import tiny_llama


def _untouched(model) -> bool:
    return not any(isinstance(m, LoraLayer) for m in model.modules())


def test_unknown_sae_release_or_id(llama, tokenizer, data):
    config = sails_config(sae_release="gemma-scope-2b-pt-res-canonical", sae_ids={1: "layer_1/width_1k/nope"})
    with pytest.raises(ValueError, match="'layer_1/width_1k/nope' of release 'gemma-scope-2b-pt-res-canonical'.*"
                                         "not found in release"):
        select_features(llama, tokenizer, config, data[0], data[1], show_progress=False)
    with pytest.raises(ValueError, match="Release not-a-release not found"):
        select_features(llama, tokenizer, sails_config(sae_release="not-a-release"), data[0], data[1],
                        show_progress=False)
    with pytest.raises(ValueError, match="of release 'org/bad name!'.*Repo id must"):  # checked by huggingface_hub
        select_features(llama, tokenizer, sails_config(sae_release="org/bad name!"), data[0], data[1],
                        show_progress=False)


def test_rank_larger_than_the_residual_stream(llama, selected_config):
    config = copy.deepcopy(selected_config)
    config.r = 128
    with pytest.raises(ValueError, match="r=128 is larger than the residual stream width 64; choose r <= 64"):
        get_peft_model(llama, config)
    assert _untouched(llama)


def test_target_modules_that_do_not_exist(llama, selected_config):
    config = copy.deepcopy(selected_config)
    config.target_modules = {"qkv_fused"}
    with pytest.raises(ValueError, match="qkv_fused"):
        get_peft_model(llama, config)
    assert _untouched(llama)


def test_feature_ids_from_another_sae(llama, selected_config):
    config = copy.deepcopy(selected_config)
    config.features = {1: [{"id": 999, "delta": 0.1, "rho": 1.0}]}
    with pytest.raises(ValueError, match="Feature id 999 at layer 1 does not exist: the SAE has d_sae=256"):
        get_peft_model(llama, config)
    assert _untouched(llama)


def test_non_finite_activations(llama, tokenizer, data, planted_saes):
    with torch.no_grad():
        llama.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="Non-finite residual activations at layer 1"):
        select_features(llama, tokenizer, sails_config(), data[0], data[1], show_progress=False)


def test_meta_device_model(tokenizer, data, selected_config):
    with torch.device("meta"):
        model = tiny_llama(tokenizer)
    with pytest.raises(ValueError, match="weights are on the meta device"):
        select_features(model, tokenizer, sails_config(), data[0], data[1], show_progress=False)
    lazy = get_peft_model(model, copy.deepcopy(selected_config))  # nothing to initialise from yet
    with pytest.raises(ValueError, match="weights are on the meta device"):
        initialize_sails_weights(lazy)


def test_sidecar_from_another_adapter(tmp_path, llama, tokenizer, selected_config):
    get_peft_model(llama, copy.deepcopy(selected_config)).save_pretrained(tmp_path / "a")
    other = copy.deepcopy(selected_config)
    other.r = 2
    get_peft_model(tiny_llama(tokenizer), other).save_pretrained(tmp_path / "b")
    (tmp_path / "a" / "sails_config.json").write_text((tmp_path / "b" / "sails_config.json").read_text())
    with pytest.raises(ValueError, match="does not describe the adapter beside it: r 2 \\(sidecar\\) vs 4"):
        SAILSConfig.from_pretrained(str(tmp_path / "a"))


def test_failed_save_writes_no_config(tmp_path, llama, selected_config):
    """The card is rendered before anything SAILS writes: a bad eval file leaves no config, sidecar or card."""
    (tmp_path / "sails_eval.json").write_text(json.dumps([{"dataset_name": "x"}]))
    model = get_peft_model(llama, copy.deepcopy(selected_config))
    with pytest.raises(ValueError, match="lacks \\['dataset_type', 'metric_type', 'metric_value'\\]"):
        model.save_pretrained(tmp_path)
    assert not {"adapter_config.json", "sails_config.json"} & {p.name for p in tmp_path.iterdir()}
    assert not list(tmp_path.glob(".tmp-*"))


def test_save_load_bit_identical_weights(tmp_path, llama, tokenizer, selected_config):
    model = get_peft_model(llama, copy.deepcopy(selected_config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    reloaded = PeftModel.from_pretrained(tiny_llama(tokenizer), str(tmp_path))
    state = {k.replace(".default", ""): v for k, v in reloaded.state_dict().items() if "lora_" in k}
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)
    assert not list(tmp_path.glob("*.bin"))  # safetensors only


def test_memory_equals_plain_lora(tokenizer, selected_config):
    def footprint(model):
        return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])

    sails = get_peft_model(tiny_llama(tokenizer), copy.deepcopy(selected_config))
    lora = get_peft_model(tiny_llama(tokenizer), LoraConfig(r=4, lora_alpha=8,
                                                            target_modules=selected_config.target_modules))
    assert footprint(sails) == footprint(lora)
    assert not any("sae" in n.lower() for n, _ in sails.named_buffers())  # no SAE or basis kept on the model


class StepCounter(TrainerCallback):
    def __init__(self):
        self.seen = []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(state.global_step)


@pytest.mark.slow
def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, tokenizer, data, selected_config):
    def run(output_dir, max_steps, resume=None):
        args = SFTConfig(output_dir=str(output_dir), max_steps=max_steps, save_steps=3, save_strategy="steps",
                         per_device_train_batch_size=8, learning_rate=1e-2, lr_scheduler_type="constant",
                         bf16=False, use_cpu=True, report_to=[], seed=0, data_seed=0, full_determinism=True,
                         dataloader_num_workers=0, logging_steps=1)
        steps = StepCounter()
        trainer = SFTTrainer(model=tiny_llama(tokenizer), args=args, train_dataset=data[0], callbacks=[steps],
                             processing_class=tokenizer, peft_config=copy.deepcopy(selected_config))
        trainer.train(resume_from_checkpoint=resume)
        return steps.seen, {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}

    _, full = run(tmp_path / "full", 6)
    run(tmp_path / "part", 3)
    steps, resumed = run(tmp_path / "part", 6, resume=str(tmp_path / "part" / "checkpoint-3"))
    assert steps == [4, 5, 6]  # really resumed, not retrained from scratch
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


def test_no_pickle_loading_in_the_package():
    """Weights are read through safetensors only; any torch.load must be weights_only=True."""
    for path in Path(peft_sails.__file__).parent.rglob("*.py"):
        source = path.read_text()
        assert "import pickle" not in source, path
        for call in re.findall(r"torch\.load\([^)]*\)", source):
            assert "weights_only=True" in call, (path, call)


def test_no_tokens_to_score(llama, tokenizer, data, planted_saes):
    with pytest.raises(ValueError, match="No tokens to score at layer 1 .*check token_scope and max_length"):
        select_features(llama, tokenizer, sails_config(max_length=4), data[0], data[1], show_progress=False)


def _zero3_shard(full: torch.Tensor) -> torch.nn.Parameter:
    """What DeepSpeed ZeRO-3 leaves on a process for a partitioned parameter: an empty tensor that knows its size."""
    shard = torch.nn.Parameter(torch.empty(0, dtype=full.dtype))
    shard.ds_numel, shard.ds_shape = full.numel(), full.shape
    return shard


def test_partitioned_norm_weight_is_refused(llama, selected_config):
    """Norm mapping reads RMSNorm weights: a ZeRO-3 shard gets a clear error, never arithmetic on an empty tensor."""
    llama.model.layers[2].post_attention_layernorm.weight = _zero3_shard(llama.model.layers[2].post_attention_layernorm.weight)
    with pytest.raises(ValueError, match=r"layers.2.post_attention_layernorm.weight is partitioned across processes "
                                         r"\(DeepSpeed ZeRO-3 or FSDP: this process holds 0 of its 64 values\).*"
                                         r"before accelerator.prepare"):
        get_peft_model(llama, copy.deepcopy(selected_config))


def test_partitioned_lora_weight_is_refused_before_anything_is_written(llama, selected_config):
    peft_model = get_peft_model(llama, selected_config.stock_lora_config())
    q_proj = peft_model.base_model.model.model.layers[3].self_attn.q_proj
    q_proj.lora_A["default"].weight = _zero3_shard(q_proj.lora_A["default"].weight)
    before = {k: v.clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
    with pytest.raises(ValueError, match=r"layers.3.self_attn.q_proj LoRA weight is partitioned"):
        initialize_sails_weights(peft_model, config=copy.deepcopy(selected_config))
    assert all(torch.equal(before[k], v) for k, v in peft_model.state_dict().items() if "lora_" in k)
