"""What alignment costs, measured with lm-evaluation-harness (`lm-eval`) on the model the safety evaluation uses.

    peft-sails eval --adapter you/gemma-2-2b-sails --prompts hex-phi --capability lm-eval --tasks arc_easy hellaswag
    peft-sails eval --adapter ./my-sails --prompts synthetic --capability lm-eval --tasks my_qa \
        --lm_eval_include_path ./my_tasks --lm_eval_limit 100

    from peft_sails.eval.capability import run_lm_eval

    scores = run_lm_eval(model, tokenizer, ["arc_easy"], limit=200)   # the loaded (PEFT) model, no second load
    scores["tasks"]["arc_easy"]["metrics"]["acc"]                      # {"value": 0.71, "stderr": 0.032}

lm-eval is an optional dependency (`pip install "peft-sails[lm-eval]"`); it is imported only when called.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

CAPABILITY_CHOICES = ("none", "lm-eval")
_NOT_METRICS = {"name", "alias", "sample_len", "samples"}


def _import_lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as err:
        raise ImportError("--capability lm-eval needs lm-evaluation-harness: pip install \"peft-sails[lm-eval]\" "
                          "(or pip install lm-eval).") from err
    return lm_eval


@contextlib.contextmanager
def _lm_eval_log_level(level: int | str) -> Iterator[None]:
    """lm-eval's loggers at `level` (e.g. "ERROR": no notices about pre-loaded models, seeds and few-shot
    overrides), restored on exit."""
    logger = logging.getLogger("lm_eval")
    before = logger.level
    level = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if level < logging.WARNING and not logger.handlers:  # lm-eval prints its notices through its own handler
        from lm_eval.utils import setup_logging

        setup_logging(level)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def lm_eval_task_manager(include_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                         include_defaults: bool = True) -> Any:
    """An `lm_eval.tasks.TaskManager` that also finds the task YAMLs under `include_path` (a folder or a list of
    folders). Indexing lm-eval's own ~15k task configs takes a few seconds; `include_defaults=False` skips them."""
    _import_lm_eval()
    from lm_eval.tasks import TaskManager

    paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path or [])
    for path in paths:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"lm-eval include path {str(path)!r} is not a folder of task YAMLs.")
    return TaskManager(include_path=[str(p) for p in paths] or None, include_defaults=include_defaults)


def check_tasks(tasks: Sequence[str], task_manager: Any) -> None:
    """Raise a ValueError naming every task that `task_manager` knows neither as a task, a group nor a tag."""
    if not tasks:
        raise ValueError("--capability lm-eval needs at least one task: --tasks arc_easy hellaswag ...")
    known = set(task_manager.all_tasks)
    unknown = [t for t in tasks if t not in known and not os.path.isfile(t)]
    if unknown:
        raise ValueError(f"Unknown lm-eval task(s) {unknown}: not among lm-eval's tasks, groups and tags, nor under "
                         "--lm_eval_include_path (`lm-eval ls tasks` lists them).")


def _metrics(entry: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """lm-eval's flat `{"acc,none": 0.5, "acc_stderr,none": 0.1, ...}` -> `{"acc": {"value", "stderr"}}`; a
    filter other than "none" is kept in the name: `exact_match (strict-match)`."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in entry.items():
        name, _, filter_name = key.partition(",")
        if name in _NOT_METRICS or name.endswith("_stderr") or not filter_name:
            continue
        stderr = entry.get(f"{name}_stderr,{filter_name}")
        label = name if filter_name == "none" else f"{name} ({filter_name})"
        out[label] = {"value": value, "stderr": stderr if isinstance(stderr, (int, float)) else None}
    return out


def summarise_lm_eval(results: dict[str, Any]) -> dict[str, Any]:
    """The parts of `lm_eval.simple_evaluate`'s output a report needs: per task (and group) its metrics with
    stderr (None where lm-eval gives "N/A"), higher-is-better flags, few-shot count and number of samples."""
    tasks = {}
    for task, entry in results["results"].items():
        higher = results.get("higher_is_better", {}).get(task, {})
        metrics = _metrics(entry)
        for label, metric in metrics.items():
            metric["higher_is_better"] = higher.get(label.split(" (")[0])
        samples = results.get("n-samples", {}).get(task, {})
        tasks[task] = {"alias": entry.get("alias", task).strip(" -"), "metrics": metrics,
                       "num_fewshot": results.get("n-shot", {}).get(task),
                       "n": samples.get("effective", entry.get("sample_len")),
                       "version": results.get("versions", {}).get(task),
                       "group": bool(results.get("group_subtasks", {}).get(task))}
    config = results.get("config", {})
    return {"lm_eval_version": results.get("lm_eval_version"), "tasks": tasks,
            "settings": {k: config.get(k) for k in ("limit", "batch_size", "bootstrap_iters", "random_seed")}}


def run_lm_eval(model: Any, tokenizer: Any, tasks: Sequence[str], *,
                include_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                task_manager: Any = None, limit: int | float | None = None, num_fewshot: int | None = None,
                batch_size: int | str = 1, max_length: int | None = None, bootstrap_iters: int = 1000,
                log_level: int | str = "ERROR") -> dict[str, Any]:
    """Run lm-evaluation-harness `tasks` on an already loaded model and summarise the scores.

    Args:
        model: the model under test, as loaded: a `PeftModel` (the adapter active), a merged or a plain causal
            LM. It is wrapped in lm-eval's `HFLM` as it is, on its own device; nothing is loaded again.
        tokenizer: its tokenizer (the adapter's when it saved one).
        tasks: lm-eval task, group or tag names (e.g. "arc_easy", "mmlu"), or names defined under `include_path`.
        include_path: folder(s) of local task YAMLs (a task over a local `dataset_path: json` file runs offline).
        task_manager: an `lm_eval.tasks.TaskManager` to reuse (see `lm_eval_task_manager`); built from
            `include_path` when None.
        limit: at most this many examples per task (a float < 1: that share); for quick, not comparable, runs.
        num_fewshot: few-shot examples per prompt (default: each task's own, else 0).
        batch_size: lm-eval batch size, or "auto".
        max_length: context length for lm-eval (default: read from the model config, else 2048).
        bootstrap_iters: bootstrap resamples for the stderr of non-mean metrics (0: no stderr for them).
        log_level: lm-eval's log level during the run ("ERROR" keeps its notices out; "INFO" shows them).

    Returns:
        `{"lm_eval_version", "tasks": {task: {"alias", "metrics": {metric: {"value", "stderr",
        "higher_is_better"}}, "num_fewshot", "n", "version", "group"}}, "settings"}` (see `summarise_lm_eval`).

    Memory: lm-eval's requests for every example of every task are built up front (text only); the forward
    passes run at `batch_size` under no_grad, so activation memory is that of one batch of full-length contexts.
    lm-eval seeds Python's, NumPy's and torch's global generators (fixed seeds), as its CLI does.
    """
    lm_eval = _import_lm_eval()
    from lm_eval.models.huggingface import HFLM

    with _lm_eval_log_level(log_level):
        task_manager = task_manager or lm_eval_task_manager(include_path)
        check_tasks(tasks, task_manager)
        extra = {"max_length": max_length} if max_length else {}
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **extra)
        results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=task_manager, limit=limit,
                                          num_fewshot=num_fewshot, batch_size=batch_size,
                                          bootstrap_iters=bootstrap_iters, log_samples=False)
    return summarise_lm_eval(results)
