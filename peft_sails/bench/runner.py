"""One alignment run: TRL's `SFTTrainer` on N harmful+refusal and N benign+answer examples, with the test splits
scored along the way (the learning curve); optionally followed by a user's benign fine-tuning of the aligned model
(does the alignment last?)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, concatenate_datasets
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from .corpus import TEST_SPLITS
from .evaluation import evaluate_splits
from .methods import TARGETS, Method, Prepared, save_trained, trainable_model


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 100
    batch_size: int = 16
    eval_fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.7, 1.0)
    id_every: int = 5  # the `id` split is also scored every this many steps in the first half (0: never)
    lora_r: int = 8
    lora_alpha: int = 16
    downstream_steps: int = 50  # benign fine-tuning after alignment (0: none)
    downstream_lr: float = 5e-4
    downstream_rows: int = 64
    device: str = "cpu"

    @property
    def eval_steps(self) -> list[int]:
        return sorted({max(1, round(f * self.steps)) for f in self.eval_fractions})

    @property
    def id_steps(self) -> list[int]:
        return list(range(self.id_every, self.steps // 2 + 1, self.id_every)) if self.id_every else []


def alignment_data(corpus: DatasetDict, n_train: int, seed: int) -> Dataset:
    """N harmful requests with refusals and N benign requests with answers, drawn with `seed` (the same draw for
    every method: runs are paired by seed)."""
    harmful = corpus["align_pool"].shuffle(seed=seed).select(range(n_train))
    benign = corpus["benign_pool"].shuffle(seed=seed).select(range(n_train))
    return concatenate_datasets([harmful, benign]).select_columns(["messages"]).shuffle(seed=seed)


class _Curve(TrainerCallback):
    """Score `splits` after the steps in `at`, and the `id` split alone after the steps in `at_id` (the model
    goes back to training mode afterwards)."""

    def __init__(self, at: Sequence[int], splits: Sequence[str], score, at_id: Sequence[int] = ()):
        self.at, self.splits, self.score, self.points = set(at), list(splits), score, {}
        self.at_id = set(at_id) - self.at if "id" in splits else set()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step in self.at or step in self.at_id:
            was_training = model.training
            self.points[step] = self.score(model, self.splits if step in self.at else ["id"])
            model.train(was_training)


def trainable_share(model: Any) -> float:
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    base = sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)
    return trainable / base


def _sft_args(settings: TrainSettings, work_dir: Path, steps: int, lr: float, seed: int) -> SFTConfig:
    return SFTConfig(output_dir=str(work_dir), max_steps=steps, per_device_train_batch_size=settings.batch_size,
                     learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=max(steps // 20, 1),
                     logging_steps=steps, bf16=False, report_to=[], save_strategy="no", seed=seed, data_seed=seed,
                     use_cpu=settings.device == "cpu", disable_tqdm=True,
                     gradient_checkpointing=False)  # TRL's default recomputes activations: same numbers, more time


def run_alignment(method: Method, prepared: Prepared, base: Any, tokenizer: Any, corpus: DatasetDict,
                  n_train: int, seed: int, lr: float, settings: TrainSettings, splits: Sequence[str],
                  work_dir: Path, save_dir: Path | None = None, eval_steps: Sequence[int] | None = None,
                  downstream: bool = False) -> tuple[dict[int, dict], float, dict[str, dict] | None]:
    """Train one model; return {step: {split: metrics}} at `eval_steps` (default `settings.eval_steps`, with the
    `id` split also at `settings.id_steps`), the trainable share of parameters, and with `downstream` the test
    splits after `downstream_finetune` (else None). With `save_dir`, the aligned adapter (or full model) is saved
    there first."""
    train_data = alignment_data(corpus, n_train, seed)
    model = trainable_model(method, prepared, base, seed, tokenizer, train_data)
    share = trainable_share(model)
    curve = _Curve(eval_steps or settings.eval_steps, splits, lambda m, s: evaluate_splits(m, tokenizer, corpus, s),
                   at_id=() if eval_steps else settings.id_steps)
    trainer = SFTTrainer(model=model, args=_sft_args(settings, work_dir, settings.steps, lr, seed),
                         processing_class=tokenizer, callbacks=[curve], train_dataset=train_data)
    trainer.train()
    if save_dir is not None:
        save_trained(method, trainer.model, save_dir)
    after = downstream_finetune(trainer.model, tokenizer, corpus, seed, settings, work_dir) if downstream else None
    return curve.points, share, after


def downstream_finetune(model: Any, tokenizer: Any, corpus: DatasetDict, seed: int, settings: TrainSettings,
                        work_dir: Path) -> dict[str, dict]:
    """A user's downstream task after alignment (the harmful-fine-tuning problem with benign data, Qi et al. 2023):
    merge the aligned adapter into the model, train a fresh plain LoRA (same rank and targets, PEFT's default init)
    on `settings.downstream_rows` benign request + answer rows only, for `settings.downstream_steps` steps at
    `settings.downstream_lr`, the same for every method; return the test splits' metrics afterwards."""
    merged = model.merge_and_unload() if isinstance(model, PeftModel) else model
    data = corpus["benign_pool"].shuffle(seed=10_000 + seed).select(range(settings.downstream_rows))
    user = get_peft_model(merged, LoraConfig(r=settings.lora_r, lora_alpha=settings.lora_alpha,
                                             target_modules=list(TARGETS)))
    SFTTrainer(model=user, args=_sft_args(settings, work_dir, settings.downstream_steps, settings.downstream_lr, seed),
               processing_class=tokenizer, train_dataset=data.select_columns(["messages"])).train()
    return evaluate_splits(user, tokenizer, corpus, TEST_SPLITS)
