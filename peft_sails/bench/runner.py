"""One alignment run: TRL's `SFTTrainer` on N harmful+refusal and N benign+answer examples, with the test splits
scored at fixed steps (the learning curve)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import DatasetDict, concatenate_datasets
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from .evaluation import evaluate_splits
from .methods import Method, Prepared, trainable_model


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 100
    batch_size: int = 16
    eval_fractions: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4, 0.7, 1.0)
    lora_r: int = 8
    lora_alpha: int = 16

    @property
    def eval_steps(self) -> list[int]:
        return sorted({max(1, round(f * self.steps)) for f in self.eval_fractions})


def alignment_data(corpus: DatasetDict, n_train: int, seed: int):
    """N harmful requests with refusals and N benign requests with answers, drawn with `seed` (the same draw for
    every method: runs are paired by seed)."""
    harmful = corpus["align_pool"].shuffle(seed=seed).select(range(n_train))
    benign = corpus["benign_pool"].shuffle(seed=seed).select(range(n_train))
    return concatenate_datasets([harmful, benign]).select_columns(["messages"]).shuffle(seed=seed)


class _Curve(TrainerCallback):
    """Score the splits after the steps in `at` (the model goes back to training mode afterwards)."""

    def __init__(self, at: Sequence[int], score):
        self.at, self.score, self.points = set(at), score, {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.at:
            was_training = model.training
            self.points[state.global_step] = self.score(model)
            model.train(was_training)


def trainable_share(model: Any) -> float:
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    base = sum(p.numel() for name, p in model.named_parameters() if "lora_" not in name)
    return trainable / base


def run_alignment(method: Method, prepared: Prepared, base: Any, tokenizer: Any, corpus: DatasetDict,
                  n_train: int, seed: int, lr: float, settings: TrainSettings, splits: Sequence[str],
                  work_dir: Path, save_dir: Path | None = None, eval_steps: Sequence[int] | None = None
                  ) -> tuple[dict[int, dict], float]:
    """Train one model; return {step: {split: metrics}} at `eval_steps` (default `settings.eval_steps`) and the
    trainable share of parameters. With `save_dir`, the trained adapter (or full model) is saved there."""
    model = trainable_model(method, prepared, base, seed)
    share = trainable_share(model)
    curve = _Curve(eval_steps or settings.eval_steps, lambda m: evaluate_splits(m, tokenizer, corpus, splits))
    args = SFTConfig(output_dir=str(work_dir), max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
                     learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=max(settings.steps // 20, 1),
                     logging_steps=settings.steps, bf16=False, report_to=[], save_strategy="no", seed=seed,
                     data_seed=seed, use_cpu=True, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, callbacks=[curve],
                         train_dataset=alignment_data(corpus, n_train, seed))
    trainer.train()
    if save_dir is not None:
        trainer.model.save_pretrained(str(save_dir))
    return curve.points, share
