"""TRL's SFTTrainer trains a SAILS adapter unchanged, from a model object or a model path."""

import copy

import pytest
import torch
from trl import SFTConfig, SFTTrainer


def _args(tmp_path, **overrides):
    kwargs = dict(output_dir=str(tmp_path / "out"), max_steps=40, per_device_train_batch_size=8, learning_rate=5e-2,
                  logging_steps=1, bf16=False, report_to=[], save_strategy="no", seed=0, use_cpu=True,
                  dataloader_num_workers=0)
    kwargs.update(overrides)
    return SFTConfig(**kwargs)


def _lora_b_norm(model):
    return sum(p.detach().norm().item() for n, p in model.named_parameters() if "lora_B" in n and "q_proj" in n)


@pytest.mark.slow
def test_sft_trainer_trains_sails_adapter(tmp_path, llama, tokenizer, data, selected_config):
    trainer = SFTTrainer(model=llama, args=_args(tmp_path), train_dataset=data[0], processing_class=tokenizer,
                         peft_config=copy.deepcopy(selected_config))
    assert _lora_b_norm(trainer.model) == 0.0  # readers start with B = 0
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    # a random tiny model: logits are small, so the loss falls slowly from log(vocab), but it must fall
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses
    assert _lora_b_norm(trainer.model) > 0.0
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.slow
def test_sft_trainer_from_model_path(tmp_path, tokenizer, data, selected_config):
    from peft_sails.offline import tiny_llama

    path = tmp_path / "tiny-llama"
    tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    trainer = SFTTrainer(model=str(path), args=_args(tmp_path, max_steps=2), train_dataset=data[0],
                         peft_config=copy.deepcopy(selected_config))
    trainer.train()
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "sails_config.json").exists()
    stats = trainer.model.peft_config["default"].subspace_stats
    assert stats["n_reader_modules"] == 20 and torch.cuda.device_count() == 0
