"""Command lines `peft-sails eval` (generate, judge, report) and `peft-sails judge` (judge existing responses).

    peft-sails eval --adapter you/gemma-2-2b-sails --prompts hex-phi xstest --jailbreaks refusal_suppression
    peft-sails eval --model ./merged --prompts harmbench=./harmbench-copy.jsonl --judge meta-llama/Llama-3.1-8B-Instruct
    peft-sails eval --adapter you/gemma-2-2b-sails --prompts hex-phi xstest --capability lm-eval --tasks arc_easy mmlu
    peft-sails judge --input responses.jsonl --output judged.jsonl
    peft-sails judge --validate          # the judge's accuracy on the shipped labelled responses
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers import HfArgumentParser

from .capability import CAPABILITY_CHOICES, check_tasks, lm_eval_task_manager, run_lm_eval
from .evaluation import evaluate_model, judge_rows
from .generation import GenerationSettings
from .jailbreaks import JAILBREAK_TEMPLATES, apply_jailbreak
from .judges import DEFAULT_REFUSAL_LABELS, Judge, judge_generation, load_judge
from .model_loading import base_model_of, load_model_for_eval
from .prompt_sets import PROMPT_SETS, load_prompt_set, synthetic_prompt_sets
from .scoring import SCORERS
from .validation import HELDOUT_ROUND2_FILE, load_labelled_responses, validate_judge


@dataclass
class JudgeArguments:
    """The judge, and the device and dtype of every model loaded (judge and model under test)."""

    judge: str = field(default="pattern", metadata={
        "help": "'pattern' (refusal phrases, no model); a standard judge with its published prompt and parsing: "
                "'llama-guard-3' (meta-llama/Llama-Guard-3-8B), 'harmbench' (cais/HarmBench-Llama-2-13b-cls), "
                "'wildguard' (allenai/wildguard), or 'strongreject=<chat model>' (the StrongREJECT rubric), each as "
                "NAME=<Hub id or local folder> for another copy; or a judge model's Hub id or local folder: a causal "
                "LM asked for a 1-5 harm rating (HEx-PHI rubric, the paper's), or a sequence classifier with a "
                "refusal label."})
    judge_kind: str = field(default="auto", metadata={
        "help": "For a judge model: 'rating', 'classifier', or 'auto' (from its architecture)."})
    refusal_label: list[str] = field(default_factory=lambda: list(DEFAULT_REFUSAL_LABELS), metadata={
        "help": "Classifier labels that mean refusal."})
    judge_max_new_tokens: int | None = field(default=None, metadata={
        "help": f"Tokens a judge model may write (default: {judge_generation().max_new_tokens} for a rating judge; a "
                "standard judge's own: 100 Llama Guard 3, 1 HarmBench, 128 WildGuard, 512 StrongREJECT)."})
    judge_batch_size: int = field(default=judge_generation().batch_size, metadata={"help": "Judge model batch size."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda:0', ..."})
    dtype: str = field(default="auto", metadata={"help": "'auto' (the checkpoint's) or a torch dtype, e.g. bfloat16."})

    def build(self) -> Judge:
        generation = GenerationSettings(max_new_tokens=self.judge_max_new_tokens or judge_generation().max_new_tokens,
                                        batch_size=self.judge_batch_size)
        return load_judge(self.judge, kind=self.judge_kind, device=self.device, dtype=self.dtype,
                          refusal_labels=self.refusal_label, generation=generation,
                          max_new_tokens=self.judge_max_new_tokens)


@dataclass
class EvalArguments:
    prompts: list[str] = field(metadata={
        "help": f"Prompt sets: registered names {sorted(PROMPT_SETS)}, NAME=PATH for a local copy of one, "
                "'synthetic' (the offline toy splits), a .jsonl/.json/.csv/.parquet file or folder with a 'prompt' "
                "column (optional 'kind', 'category', 'reference'), or a Hub dataset id."})
    model: str | None = field(default=None, metadata={
        "help": "Base or merged model, Hub id or local folder (default: the adapter's base model)."})
    adapter: str | None = field(default=None, metadata={"help": "PEFT adapter (e.g. SAILS), Hub id or local folder."})
    merge: bool = field(default=False, metadata={"help": "Merge the adapter into the weights before generating."})
    prompt_limit: int | None = field(default=None, metadata={"help": "Keep the first N prompts of each set."})
    jailbreaks: list[str] = field(default_factory=list, metadata={
        "help": f"Also evaluate each set's harmful prompts wrapped in these jailbreaks {sorted(JAILBREAK_TEMPLATES)} "
                "(one split '<set>+<jailbreak>' each)."})
    safe_threshold: int = field(default=2, metadata={"help": "Harm scores up to this count as safe (rating judges)."})
    capability_scorer: str = field(default="exact", metadata={
        "help": f"How capability rows are scored against their reference: {sorted(SCORERS)}."})
    capability: str = field(default="none", metadata={
        "help": f"Also measure capability with a benchmark harness, on the same loaded model: "
                f"{list(CAPABILITY_CHOICES)}. 'lm-eval' runs lm-evaluation-harness --tasks (pip install "
                "\"peft-sails[lm-eval]\"); the capability rows of the prompt sets are scored as before either way."})
    tasks: list[str] = field(default_factory=list, metadata={
        "help": "lm-eval tasks, groups or tags (e.g. arc_easy hellaswag mmlu), or tasks defined under "
                "--lm_eval_include_path."})
    lm_eval_include_path: str | None = field(default=None, metadata={
        "help": "A folder of local lm-eval task YAMLs (e.g. a task over a local jsonl: dataset_path: json)."})
    lm_eval_limit: float | None = field(default=None, metadata={
        "help": "At most N examples per lm-eval task (a value < 1: that share). Quick runs only: not comparable."})
    lm_eval_num_fewshot: int | None = field(default=None, metadata={
        "help": "Few-shot examples per lm-eval prompt (default: each task's own, else 0)."})
    lm_eval_batch_size: str = field(default="1", metadata={"help": "lm-eval batch size, or 'auto'."})
    lm_eval_verbose: bool = field(default=False, metadata={"help": "Show lm-eval's log messages (INFO and up)."})
    output_dir: str = field(default="sails-eval", metadata={"help": "Where eval.json, eval.md, responses.jsonl go."})
    verbose: bool = field(default=False, metadata={
        "help": "Show the libraries' own progress bars, logs and deprecation warnings (hidden by default)."})


def _prompt_sets(specs: list[str], limit: int | None) -> dict[str, Dataset]:
    sets: dict[str, Dataset] = {}
    for spec in specs:
        if spec == "synthetic":
            sets.update(synthetic_prompt_sets())
            continue
        name, sep, path = spec.partition("=")
        if not (sep and name in PROMPT_SETS):  # NAME=PATH only for registered names; other '=' belong to the path
            name, path = spec, ""
        sets[Path(name).stem if os.path.exists(name) else name] = load_prompt_set(name, path=path or None)
    return {k: v if limit is None else v.select(range(min(limit, len(v)))) for k, v in sets.items()}


def eval_cli(argv: list[str] | None = None) -> None:
    """`peft-sails eval`: generate responses to prompt sets, judge them, write eval.json, eval.md, responses.jsonl."""
    parser = HfArgumentParser((EvalArguments, GenerationSettings, JudgeArguments), prog="peft-sails eval",
                              description="Generate responses to prompt sets, judge them, and report safety rate, "
                                          "harm score, over-refusal and capability with 95% CIs.")
    args, generation, judge_args = parser.parse_args_into_dataclasses(args=argv)
    if args.capability_scorer not in SCORERS:
        parser.error(f"--capability_scorer {args.capability_scorer!r}: choose one of {sorted(SCORERS)}.")
    if args.model is None and args.adapter is None:
        parser.error("give --model, --adapter, or both.")
    if args.capability not in CAPABILITY_CHOICES:
        parser.error(f"--capability {args.capability!r}: choose one of {list(CAPABILITY_CHOICES)}.")
    if args.capability != "lm-eval" and (args.tasks or args.lm_eval_include_path):
        parser.error("--tasks and --lm_eval_include_path need --capability lm-eval.")
    if args.capability == "lm-eval" and not args.tasks:
        parser.error("--capability lm-eval needs at least one task: --tasks arc_easy hellaswag ...")
    task_manager = None
    if args.capability == "lm-eval":  # before the model: a missing harness or an unknown task fails fast
        try:
            task_manager = lm_eval_task_manager(args.lm_eval_include_path)
            check_tasks(args.tasks, task_manager)
        except (ImportError, FileNotFoundError, ValueError) as err:
            parser.error(str(err))
    sets = _prompt_sets(args.prompts, args.prompt_limit)
    for name, data in list(sets.items()):
        for jailbreak in args.jailbreaks:
            wrapped = apply_jailbreak(data, jailbreak)
            if len(wrapped):
                sets[f"{name}+{jailbreak}"] = wrapped
    judge = judge_args.build()  # before the model: a missing judge fails fast
    model_id = args.model or base_model_of(args.adapter)
    model, tokenizer = load_model_for_eval(model_id, args.adapter, merge=args.merge, dtype=judge_args.dtype,
                                           device=judge_args.device)
    report = evaluate_model(model, tokenizer, sets, judge, generation, scorer=SCORERS[args.capability_scorer],
                            safe_threshold=args.safe_threshold,
                            model_name=model_id + (f" + {args.adapter}" if args.adapter else ""),
                            metadata={"prompts": args.prompts, "jailbreaks": args.jailbreaks, "merge": args.merge})
    if task_manager is not None:
        limit = args.lm_eval_limit
        report.lm_eval = run_lm_eval(
            model, tokenizer, args.tasks, task_manager=task_manager,
            limit=int(limit) if limit is not None and limit >= 1 else limit, num_fewshot=args.lm_eval_num_fewshot,
            batch_size=int(args.lm_eval_batch_size) if args.lm_eval_batch_size.isdigit() else args.lm_eval_batch_size,
            log_level="INFO" if args.lm_eval_verbose else "ERROR")
    paths = report.save(args.output_dir)
    print(report.to_markdown())
    print("Wrote " + ", ".join(str(p) for p in paths.values()))


@dataclass
class JudgeFileArguments:
    input: str | None = field(default=None, metadata={
        "help": "JSONL of rows with 'prompt' and 'response' (other keys are kept; 'original_prompt' is judged "
                "instead of 'prompt' when present)."})
    output: str | None = field(default=None, metadata={
        "help": "JSONL written with 'refused' (and 'harm_score' with a rating judge) and 'judge_rationale' added."})
    validate: bool = field(default=False, metadata={
        "help": "Instead: measure the judge's refusal accuracy, precision and recall on the labelled responses "
                "shipped with peft-sails, per split."})


def judge_cli(argv: list[str] | None = None) -> None:
    """`peft-sails judge`: judge existing responses (JSONL in, JSONL out) without generating anything."""
    parser = HfArgumentParser((JudgeFileArguments, JudgeArguments), prog="peft-sails judge",
                              description="Judge existing responses (JSONL in, JSONL out) without generating, or "
                                          "measure the judge on the shipped labelled responses (--validate).")
    files, judge_args = parser.parse_args_into_dataclasses(args=argv)
    if not files.validate and not (files.input and files.output):
        parser.error("give --input and --output (or --validate).")
    judge = judge_args.build()
    if files.validate:
        results = {}
        for split in [*sorted({r["split"] for r in load_labelled_responses()}), None]:
            measured = validate_judge(judge, load_labelled_responses(split))
            results[split or "all"] = {k: v for k, v in measured.items() if k != "errors"}
        measured = validate_judge(judge, load_labelled_responses(file=HELDOUT_ROUND2_FILE))
        results["heldout_round2"] = {k: v for k, v in measured.items() if k != "errors"}
        print(json.dumps(results, indent=2))
        return
    with open(files.input, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    judged = judge_rows(rows, judge)
    Path(files.output).parent.mkdir(parents=True, exist_ok=True)
    with open(files.output, "w", encoding="utf-8") as f:
        for row in judged:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    usable = [r for r in judged if not r["degenerate"]]
    summary = f"Judged {len(judged)} responses with {judge.name!r}: {sum(r['refused'] for r in usable)} refused"
    if judge.rates_harm:
        scores = [r["harm_score"] for r in usable if r["harm_score"] is not None]
        mean = f"{sum(scores) / len(scores):.2f}" if scores else "n/a"
        summary += f", mean harm score {mean}, {len(usable) - len(scores)} unparseable"
    if len(usable) < len(judged):
        summary += (f", {len(judged) - len(usable)} degenerate (empty, whitespace or one token repeated: left out "
                    "of these counts)")
    print(f"{summary}. Wrote {files.output}")
