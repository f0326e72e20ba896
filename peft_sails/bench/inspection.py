"""What one seed's SAILS and plain LoRA adapters changed, with `peft_sails.inspect`: the weight view (share of each
update inside the SAILS subspace, against a random subspace) and the feature view (the SAE features each adapter
moves most on held-out harmful and benign requests), both adapters measured against the SAILS adapter's subspace."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from peft import PeftModel
from tqdm.auto import tqdm

from ..config import SAILSConfig
from ..inspect import AdapterInspection, inspect_adapter

PROMPT_SETS = {"harmful": "id", "benign": "benign"}  # prompt set name: test split of the corpus
MAX_PROMPTS = 128
TOP_N = 20


def _summary(report: AdapterInspection, files: dict[str, Path], root: Path) -> dict[str, Any]:
    return {
        "weights": report.summary,
        "features": {s.name: {str(layer.layer): {
            "top": [f.feature for f in layer.top], "selected_in_top": layer.n_selected_in_top,
            "selected_change_share": layer.selected_change_share, "selected_baseline": layer.selected_baseline}
            for layer in s.layers} for s in report.prompt_sets},
        "files": {key: str(path.relative_to(root)) for key, path in files.items()},
    }


def inspect_pair(base: Any, tokenizer: Any, corpus: Any, adapters: dict[str, Path], out_dir: Path,
                 root: Path) -> dict[str, Any]:
    """Inspect `adapters` ({"sails": dir, "lora": dir}, trained from `base`) against the SAILS adapter's subspace and
    save each report under `out_dir/<name>/`. Returns, for the benchmark report, each adapter's weight summary,
    its top features per prompt set and layer, how many of the top features the two share, and the saved files
    (relative to `root`). `base` is copied, never modified."""
    sails_config = SAILSConfig.from_pretrained(str(adapters["sails"]))
    prompt_sets = {name: corpus[split].select(range(min(MAX_PROMPTS, len(corpus[split]))))["prompt"]
                   for name, split in PROMPT_SETS.items()}
    out: dict[str, Any] = {"top_n": TOP_N, "adapters": {}}
    for name, adapter_dir in tqdm(adapters.items(), desc="inspecting the adapters of seed 0", unit="adapter"):
        model = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dir))
        report = inspect_adapter(model, tokenizer, sails_config, prompt_sets, top_n=TOP_N, show_progress=False,
                                 adapter=str(adapter_dir), subspace_source=f"the SAILS adapter {adapters['sails']}")
        out["adapters"][name] = _summary(report, report.save(out_dir / name), root)
        del model
    tops = {name: a["features"] for name, a in out["adapters"].items()}
    if {"sails", "lora"} <= set(tops):
        out["shared_top"] = {s: {layer: len(set(tops["sails"][s][layer]["top"]) & set(tops["lora"][s][layer]["top"]))
                                 for layer in tops["sails"][s]} for s in tops["sails"]}
    return out
