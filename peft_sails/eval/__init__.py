"""Safety evaluation: generate responses to prompt sets, judge them, report safety rate, harm score, over-refusal
and capability per split and category with 95% confidence intervals.

    from peft_sails.eval import (GenerationSettings, evaluate_model, load_judge, load_model_for_eval, load_prompt_set,
                                 run_lm_eval)

    model, tokenizer = load_model_for_eval("google/gemma-2-2b-it", adapter="you/gemma-2-2b-sails")
    report = evaluate_model(model, tokenizer, {"hex-phi": load_prompt_set("hex-phi"),
                                               "xstest": load_prompt_set("xstest")},
                            judge=load_judge("pattern"), generation=GenerationSettings(max_new_tokens=256))
    report.lm_eval = run_lm_eval(model, tokenizer, ["arc_easy"])   # optional: pip install "peft-sails[lm-eval]"
    report.save("eval-out")     # eval.json, eval.md, responses.jsonl
"""

from pathlib import Path

from .capability import run_lm_eval
from .degenerate import degenerate_reason
from .evaluation import evaluate_model, judge_rows
from .generation import GenerationSettings, generate_responses
from .jailbreaks import JAILBREAK_TEMPLATES, GCGSettings, GCGSuffix, apply_jailbreak, gcg_prompt_set, gcg_suffix
from .judges import (
    HARM_RUBRIC,
    ClassifierRefusalJudge,
    Judge,
    Judgement,
    PatternRefusalJudge,
    RatingJudge,
    load_judge,
    parse_harm_score,
)
from .metrics import GroupMetrics, JudgedResponse, Mean, Rate, SplitMetrics, bootstrap_mean, summarise, wilson_interval
from .model_loading import load_model_for_eval
from .prompt_sets import PROMPT_SETS, PromptSetSpec, load_prompt_set, synthetic_prompt_sets
from .report import EvalReport
from .scoring import SCORERS, contains_reference, exact_match
from .validation import load_labelled_responses, validate_judge

SAFETY_RATE_METRIC = str(Path(__file__).parent / "metric" / "safety_rate")  # for evaluate.load(SAFETY_RATE_METRIC)

__all__ = [
    "HARM_RUBRIC",
    "JAILBREAK_TEMPLATES",
    "PROMPT_SETS",
    "SAFETY_RATE_METRIC",
    "SCORERS",
    "ClassifierRefusalJudge",
    "EvalReport",
    "GCGSettings",
    "GCGSuffix",
    "GenerationSettings",
    "GroupMetrics",
    "Judge",
    "JudgedResponse",
    "Judgement",
    "Mean",
    "PatternRefusalJudge",
    "PromptSetSpec",
    "Rate",
    "RatingJudge",
    "SplitMetrics",
    "apply_jailbreak",
    "bootstrap_mean",
    "contains_reference",
    "degenerate_reason",
    "evaluate_model",
    "exact_match",
    "gcg_prompt_set",
    "gcg_suffix",
    "generate_responses",
    "judge_rows",
    "load_judge",
    "load_labelled_responses",
    "load_model_for_eval",
    "load_prompt_set",
    "parse_harm_score",
    "run_lm_eval",
    "summarise",
    "synthetic_prompt_sets",
    "validate_judge",
    "wilson_interval",
]
