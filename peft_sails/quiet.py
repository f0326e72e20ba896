"""Keep a command's output to its own progress bars and results: the libraries' bars, logs and known warnings off.

    with quiet_libraries(verbose=args.verbose):
        main(args)

Inside `quiet_libraries`, and restored on exit:

- progress bars of 🤗 datasets (`Map`, `Saving the dataset`, TRL's `Tokenizing train dataset`...), transformers
  (`Loading weights`, `Writing model shards`), huggingface_hub, and sae-lens' `Training SAE`;
- logs below ERROR of datasets, transformers, huggingface_hub, TRL, accelerate, peft, sae-lens and bitsandbytes
  (the loggers of `peft_sails` itself are left alone: their warnings are about your run);
- the warnings in `KNOWN_WARNINGS`, by message (deprecations the libraries raise on every run, not about your code);
- the Trainer's own bar and its per-step loss dictionaries; with `trainer_logs=True` (a training recipe, whose
  user wants them) those stay, and so do the logs of transformers, TRL and accelerate.

`verbose=True` (or `PEFT_SAILS_VERBOSE=1`) changes nothing. `hold_import_notices` (run when `peft_sails` is
imported, acting only in our own commands: `peft-sails`, `python -m peft_sails...` and `trl_recipes/sails_sft.py`)
drops the one notice printed while the libraries import, before any command line is parsed, unless `--verbose`
is on the command line or `PEFT_SAILS_VERBOSE=1`. A program that imports `peft_sails` as a library keeps every
message.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

LIBRARY_LOGGERS = ("datasets", "transformers", "huggingface_hub", "trl", "accelerate", "peft", "sae_lens",
                   "bitsandbytes", "torch.distributed", "DeepSpeed", "deepspeed")
TRAINER_LOGGERS = ("transformers", "trl", "accelerate")  # kept with `trainer_logs=True`
# (message regex, category): deprecations the libraries raise themselves on every run of our commands
KNOWN_WARNINGS = (
    (r"`gradient_checkpointing` is deprecated", FutureWarning),  # transformers 5: TrainingArguments' own field
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),  # transformers 5: read by peft / TRL
    (r"`torch_dtype` is deprecated", FutureWarning),
    (r".*`resume_download` is deprecated", FutureWarning),
)
# printed by bitsandbytes when peft imports it on a CPU without the optional `kernels` package
IMPORT_NOTICES = {"bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward"}
COMMANDS = ("peft-sails", "sails_sft.py")  # programs whose import notices are held (and `python -m ...`)


class _BelowError(logging.Filter):
    """Drops records below ERROR; a filter, not a level, survives libraries that set their logger's level when
    they are imported (DeepSpeed does)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _disabled(tqdm_class):
    """`tqdm_class` with `disable=True` forced, even when the caller passes `disable=`."""
    return lambda *args, **kwargs: tqdm_class(*args, **{**kwargs, "disable": True})


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _env_verbose() -> bool:
    return os.environ.get("PEFT_SAILS_VERBOSE", "") not in ("", "0")


def verbose_requested(argv: list[str] | None = None) -> bool:
    """`--verbose` on the command line (default: `sys.argv`), or `PEFT_SAILS_VERBOSE=1` in the environment."""
    argv = sys.argv[1:] if argv is None else argv
    return "--verbose" in argv or _env_verbose()


def hold_import_notices() -> None:
    """In our commands (`COMMANDS`, or `python -m`), drop the notices in `IMPORT_NOTICES` (printed at import, before
    a command line is parsed) unless `verbose_requested()`. Call it before the libraries are imported; it touches
    only those messages."""
    program = sys.argv[0] if sys.argv else ""
    if verbose_requested() or not (os.path.basename(program) in COMMANDS or program == "-m"):
        return
    for name, prefix in IMPORT_NOTICES.items():
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in target.filters):
            target.addFilter(_DropMessages(prefix))


def _silent_callback_class():
    """A stand-in for the Trainer's `PrinterCallback` / `ProgressCallback`: no bar, no loss dictionaries."""
    from transformers import TrainerCallback

    return type("SilentProgressCallback", (TrainerCallback,), {})  # TrainerCallback's hooks do nothing


@contextlib.contextmanager
def _patched(module_name: str, attribute: str, value) -> Iterator[None]:
    """Set `module.attribute` to `value` if the module imports, and put the old value back on exit."""
    try:
        module = importlib.import_module(module_name)
        old = getattr(module, attribute)
    except (ImportError, AttributeError):
        yield
        return
    setattr(module, attribute, value)
    try:
        yield
    finally:
        setattr(module, attribute, old)


@contextlib.contextmanager
def quiet_libraries(verbose: bool = False, trainer_logs: bool = False) -> Iterator[None]:
    """Silence the libraries' progress bars, logs below ERROR and `KNOWN_WARNINGS` inside the block (see the module
    docstring), and the Trainer's bar and per-step loss dictionaries unless `trainer_logs` (which also keeps the
    logs of `TRAINER_LOGGERS`). Our own tqdm bars are untouched. `verbose=True` (or `PEFT_SAILS_VERBOSE=1`) does
    nothing."""
    if verbose or _env_verbose():
        yield
        return
    import datasets
    import huggingface_hub.utils as hub_utils
    import transformers
    from tqdm.auto import tqdm

    hf_logging = transformers.utils.logging
    names = [n for n in LIBRARY_LOGGERS if not (trainer_logs and n in TRAINER_LOGGERS)]
    levels = {name: logging.getLogger(name).level for name in names}
    state = (datasets.utils.logging.get_verbosity(), datasets.is_progress_bar_enabled(), hf_logging.get_verbosity(),
             hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled())
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        for message, category in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        datasets.utils.logging.set_verbosity_error()
        datasets.disable_progress_bars()
        if not trainer_logs:
            hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        hub_utils.disable_progress_bars()
        below_error = _BelowError()
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
            logging.getLogger(name).addFilter(below_error)
        stack.enter_context(_patched("sae_lens.training.sae_trainer", "tqdm", _disabled(tqdm)))
        if not trainer_logs:
            silent = _silent_callback_class()
            stack.enter_context(_patched("transformers.trainer", "PrinterCallback", silent))
            stack.enter_context(_patched("transformers.trainer", "DEFAULT_PROGRESS_CALLBACK", silent))
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
                logging.getLogger(name).removeFilter(below_error)
            datasets.utils.logging.set_verbosity(state[0])
            if state[1]:
                datasets.enable_progress_bars()
            hf_logging.set_verbosity(state[2])
            if state[3]:
                hf_logging.enable_progress_bar()
            if not state[4]:
                hub_utils.enable_progress_bars()


def training_progress(desc: str):
    """A Trainer callback showing our own bar (steps, with ETA) for one training run, in place of the Trainer's."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class TrainingProgress(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc=desc, unit="step")

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return TrainingProgress()


class _Once(logging.Filter):
    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


@contextlib.contextmanager
def repeated_runs(package: str = "peft_sails") -> Iterator[None]:
    """For loops that build many adapters: inside the block, each distinct warning of `package`'s loggers is shown
    once, and the SAE-loading bar of `get_peft_model` (one per SAILS adapter) is off; the loop's own bar stays."""
    from tqdm.auto import tqdm

    once = _Once()
    names = [name for name in list(logging.Logger.manager.loggerDict) if name.split(".")[0] == package]
    loggers = [logging.getLogger(name) for name in names]
    for target in loggers:
        target.addFilter(once)
    try:
        with _patched(f"{package}.initialization", "tqdm", _disabled(tqdm)):
            yield
    finally:
        for target in loggers:
            target.removeFilter(once)
