"""TRL integration: keep the SAILS card and sidecar in whatever `Trainer` pushes to the Hub."""

from __future__ import annotations

import shutil
from importlib.metadata import version
from pathlib import Path
from typing import Any, Optional

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTTrainer

from .card import write_card
from .sidecar import SIDECAR_NAME


class SailsCardCallback(TrainerCallback):
    """With `push_to_hub=True`, Trainer pushes `output_dir` after each checkpoint, copying only the adapter files
    into it: this copies the checkpoint's `sails_config.json` and SAILS card there too, before the upload."""

    def on_push_begin(self, args, state, control, **kwargs) -> None:
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        for name in (SIDECAR_NAME, "README.md"):
            if (checkpoint / name).is_file():
                shutil.copy(checkpoint / name, Path(args.output_dir) / name)


def training_summary(trainer: Any, dataset_name: Optional[str] = None) -> dict[str, Any]:
    """What the card says about training: the trainer, the main hyper-parameters and the data."""
    args = trainer.args
    summary = {
        "trainer": f"TRL {type(trainer).__name__} (trl {version('trl')}, peft {version('peft')})",
        "learning_rate": args.learning_rate,
        "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "epochs": args.num_train_epochs if args.max_steps <= 0 else None,
        "steps": trainer.state.global_step,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "seed": args.seed,
    }
    if dataset_name:
        summary["datasets"] = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name)
    return {k: v for k, v in summary.items() if v is not None}


class SailsSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose model card is the SAILS card (with TRL's training details), on save and on push.

    Plain `SFTTrainer.push_to_hub` regenerates TRL's own README.md after saving, replacing the SAILS card;
    this subclass writes the SAILS card instead, and adds `SailsCardCallback` for checkpoint pushes.
    """

    def __init__(self, *args: Any, callbacks: Optional[list] = None, **kwargs: Any) -> None:
        super().__init__(*args, callbacks=[*(callbacks or []), SailsCardCallback()], **kwargs)

    def create_model_card(self, model_name: Optional[str] = None, dataset_name: Optional[str] = None,
                          tags: Any = None, **kwargs: Any) -> None:
        # TRL also calls this before each checkpoint, when output_dir may hold no adapter yet: the checkpoint's
        # own card is then carried over by SailsCardCallback.
        if self.is_world_process_zero() and (Path(self.args.output_dir) / SIDECAR_NAME).is_file():
            write_card(self.args.output_dir, repo_id=self.hub_model_id,
                       training=training_summary(self, dataset_name))
