"""`peft-sails bench`: SAILS against plain LoRA and controls, on a world built here (no download).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 peft-sails bench --quick        # <= 20 min on 2 cores, prints the table
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 peft-sails bench --run_name full  # the committed report (about an hour)

Stages: build (or load from the cache) the world, pick each method's learning rate on the validation split,
train every (method, N, seed), score the test splits along the way, write records, report and plots. Finished
runs are kept in the results file: running the same command again resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from datasets import concatenate_datasets
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from ..controls import random_subspace
from ..initialization import compute_sails_subspace
from ..quiet import quiet_libraries, repeated_runs
from .corpus import TEST_SPLITS
from .inspection import inspect_pair
from .analysis import feature_tokens, overlap, prompt_direction
from .methods import METHODS, Prepared, prepare, selection_data
from .report import summary_tables, write_report
from .runner import TrainSettings, run_alignment
from .world import World, WorldConfig, build_world

logger = logging.getLogger(__name__)
CORE = ["lora", "sails", "direct", "random", "full", "sails-prompt"]
ABLATIONS = [m for m in METHODS if m not in CORE]
QUICK = {"methods": ["lora", "sails", "random", "direct"], "ablations": [], "n_train": [4], "seeds": 3,
         "sweep_seeds": 1, "lr_grid": [2.5e-4, 5e-4, 1e-3], "run_name": "quick"}


@dataclass
class BenchArguments:
    quick: bool = field(default=False, metadata={
        "help": f"Small run (<= 20 min on 2 cores): {QUICK}. Explicit flags below are overridden."})
    run_name: str = field(default="full", metadata={"help": "Results go to <results_dir>/<run_name>.json (+ .md, .png)."})
    results_dir: str = field(default="benchmarks/results", metadata={"help": "Folder for records, report and plots."})
    output_dir: str = field(default="bench-output", metadata={
        "help": "Every trained adapter (or full model) and a copy of the base model are saved here."})
    cache_dir: str = field(default="~/.cache/peft-sails/bench", metadata={
        "help": "The world (corpus, base model) is cached here; its SAEs go to the Hugging Face cache."})
    methods: list[str] = field(default_factory=lambda: list(CORE), metadata={
        "help": f"Methods run at every N. Known: {', '.join(METHODS)}."})
    ablations: list[str] = field(default_factory=lambda: list(ABLATIONS), metadata={
        "help": "Methods run at the smallest N only."})
    n_train: list[int] = field(default_factory=lambda: [4, 32], metadata={
        "help": "Harmful examples per run (as many benign ones are mixed in)."})
    seeds: int = field(default=8, metadata={"help": "Seeds per (method, N); seed i draws the same data for every method."})
    steps: int = field(default=100, metadata={"help": "Optimizer steps per run (batch 16, cosine decay)."})
    lr_grid: list[float] = field(default_factory=lambda: [1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3], metadata={
        "help": "Learning rates swept per adapter method (full fine-tuning sweeps them divided by 10)."})
    sweep_seeds: int = field(default=2, metadata={"help": "Seeds per learning rate in the sweep (other seeds than the test ones)."})
    rebuild_world: bool = field(default=False, metadata={"help": "Build the world again even if it is cached."})
    hidden_size: int = field(default=WorldConfig.hidden_size, metadata={
        "help": "Width of the base model (d_model; rank is 8, so this sets r/d_model). Another width is another world."})
    verbose: bool = field(default=False, metadata={
        "help": "Show the libraries' own progress bars, logs and deprecation warnings (hidden by default)."})

    def world_config(self) -> WorldConfig:
        return WorldConfig(hidden_size=self.hidden_size, intermediate_size=2 * self.hidden_size,
                           num_heads=max(1, self.hidden_size // 72))

    def __post_init__(self) -> None:
        if self.quick:
            for key, value in QUICK.items():
                setattr(self, key, value)
        unknown = sorted(set(self.methods + self.ablations) - set(METHODS))
        if unknown:
            raise ValueError(f"Unknown methods {unknown}; choose from {sorted(METHODS)}.")
        if "lora" not in self.methods:
            raise ValueError("`methods` must include 'lora': every comparison is paired against it.")
        if self.seeds < 2 or not self.n_train or min(self.n_train) < 1:
            raise ValueError("Need seeds >= 2 (for confidence intervals) and at least one positive n_train.")


def _load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"records": [], "learning_rates": {}, "runs": []}


def _check_resumable(results: dict, world_key: str, args: BenchArguments, path: Path) -> None:
    """Refuse to add runs to a results file made with another world or another number of steps."""
    old_key, old_steps = results.get("world", {}).get("key"), results.get("settings", {}).get("steps")
    if (old_key not in (None, world_key)) or (old_steps not in (None, args.steps)):
        raise ValueError(
            f"{path} holds runs of world {old_key} with {old_steps} steps, but this command builds world {world_key} "
            f"with {args.steps} steps; its runs would not be comparable. Use another --run_name (or --results_dir), "
            "or delete that file to start over.")


def _save(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def _records(method: str, n_train: int, seed: int, points: dict, share: float, lr: float) -> list[dict]:
    return [{"method": method, "n_train": n_train, "seed": seed, "step": step, "split": split,
             **metrics, "trainable_share": share, "learning_rate": lr}
            for step, by_split in sorted(points.items()) for split, metrics in by_split.items()]


def analyse(prepared: dict[str, Prepared], world: World, base, tokenizer, corpus) -> dict:
    """Overlap of every method's basis with the harmful-vs-benign request direction, and what the features of the
    SAILS methods fire on."""
    layers = sorted(world.sae_ids)
    direction = prompt_direction(base, tokenizer, next(p.config for p in prepared.values() if p.config), corpus, layers)
    d = base.config.hidden_size
    r = next(iter(prepared.values())).r
    overlaps = {"chance, sqrt(r/d)": round((r / d) ** 0.5, 3)}
    for name, p in prepared.items():
        method = METHODS[name]
        if method.kind == "sails":
            basis = compute_sails_subspace(base, p.config, show_progress=False)[0].basis
        elif method.kind == "direct":
            basis = p.subspace.basis
        elif method.kind == "random":
            basis = random_subspace(d, p.r, seed=0).basis
        else:
            continue
        overlaps[name] = round(overlap(basis, direction), 3)
    features = {}
    for name in ("sails", "sails-prompt", "sails-minfire"):
        if name in prepared:
            aligned, unaligned = selection_data(corpus, METHODS[name].contrast, n=128)
            features[name] = feature_tokens(base, tokenizer, prepared[name].config,
                                            concatenate_datasets([aligned, unaligned]))
    return {"overlap_with_request_direction": overlaps, "features": features}


def run_bench(args: BenchArguments, world_config: WorldConfig | None = None) -> dict:
    """Run (or resume) the benchmark; returns the results written to `<results_dir>/<run_name>.json`."""
    tick = time.perf_counter()
    world = build_world(world_config or args.world_config(), args.cache_dir, rebuild=args.rebuild_world)
    corpus, tokenizer, base = world.corpus(), world.tokenizer(), world.model()
    out = Path(args.output_dir)
    if not (out / world.model_dir.name).exists():
        shutil.copytree(world.model_dir, out / world.model_dir.name)
    path = Path(args.results_dir) / f"{args.run_name}.json"
    results = _load(path)
    _check_resumable(results, world.config.key(), args, path)
    results.update(world={"key": world.config.key(), "config": asdict(world.config), **world.stats},
                   settings={k: v for k, v in asdict(args).items() if k not in ("output_dir", "cache_dir", "verbose")})
    seconds = results.setdefault("seconds", {})
    seconds.setdefault("world", round(time.perf_counter() - tick, 1))
    settings = TrainSettings(steps=args.steps)
    base_points = {0: world.stats["base"]}
    names = args.methods + [m for m in args.ablations if m not in args.methods]

    tick = time.perf_counter()
    prepared = {}
    for name in tqdm(names, desc="stage 1-2 per method"):
        prepared[name] = prepare(METHODS[name], world, base, tokenizer, corpus, settings.lora_r, settings.lora_alpha)
    results["selection"] = {name: p.config.features for name, p in prepared.items()
                            if p.config is not None and p.config.features}
    seconds["selection"] = round(time.perf_counter() - tick, 1)
    if "analysis" not in results:
        results["analysis"] = analyse(prepared, world, base, tokenizer, corpus)

    tick = time.perf_counter()
    scores = results.setdefault("sweep", {})  # {method: {lr: [validation score per sweep seed]}}, kept across runs
    grid = {name: [lr / 10 if METHODS[name].kind == "full" else lr for lr in args.lr_grid]
            for name in names if METHODS[name].lr_of is None}
    sweep = [(name, lr, s) for name, lrs in grid.items() for lr in lrs for s in range(args.sweep_seeds)
             if len(scores.get(name, {}).get(str(lr), [])) <= s]
    for name, lr, s in tqdm(sweep, desc="learning-rate sweep (validation split)"):
        points, _ = run_alignment(METHODS[name], prepared[name], base, tokenizer, corpus, min(args.n_train),
                                  1000 + s, lr, settings, ["validation"], out / "tmp", eval_steps=[settings.steps])
        m = points[settings.steps]["validation"]
        scores.setdefault(name, {}).setdefault(str(lr), []).append(m["safety_rate"] - m["over_refusal"])
        _save(path, results)
    lrs = results["learning_rates"] = {}
    for name, candidates in grid.items():  # best mean validation selectivity; ties go to the smaller rate
        mean = {lr: sum(scores[name][str(lr)][:args.sweep_seeds]) / args.sweep_seeds for lr in candidates}
        lrs[name] = max(sorted(candidates), key=mean.__getitem__)
        if lrs[name] in (min(candidates), max(candidates)) and len(candidates) > 1:
            logger.warning("%s: the best learning rate %g is at the edge of the grid %s.", name, lrs[name], candidates)
    seconds["sweep"] = seconds.get("sweep", 0) + round(time.perf_counter() - tick, 1)
    _save(path, results)

    done = {(r["method"], r["n_train"], r["seed"]) for r in results["runs"]}
    todo = [(name, n, seed) for n in sorted(args.n_train) for seed in range(args.seeds) for name in names
            if (name in args.methods or n == min(args.n_train)) and (name, n, seed) not in done]
    for name, n, seed in tqdm(todo, desc="alignment runs"):
        tick = time.perf_counter()
        method = METHODS[name]
        lr = lrs[method.lr_of or name]
        points, share = run_alignment(method, prepared[name], base, tokenizer, corpus, n, seed, lr, settings,
                                      TEST_SPLITS, out / "tmp", save_dir=out / "adapters" / name / f"n{n}-seed{seed}")
        results["records"] += _records(name, n, seed, {**base_points, **points}, share, lr)
        results["runs"].append({"method": name, "n_train": n, "seed": seed, "seconds": round(time.perf_counter() - tick, 1)})
        _save(path, results)
    shutil.rmtree(out / "tmp", ignore_errors=True)

    n, adapters = min(args.n_train), {}
    for name in ("sails", "lora"):
        adapters[name] = out / "adapters" / name / f"n{n}-seed0"
    inspect_dir = path.with_name(f"{args.run_name}-inspect")
    if all(d.exists() for d in adapters.values()) and (
            results.get("inspection", {}).get("n_train") != n or not inspect_dir.exists()):
        tick = time.perf_counter()
        results["inspection"] = {"n_train": n, "seed": 0, "dir": str(inspect_dir),
                                 **inspect_pair(base, tokenizer, corpus, adapters, inspect_dir, path.parent)}
        seconds["inspection"] = round(time.perf_counter() - tick, 1)
        _save(path, results)
    write_report(results, path.with_suffix(""))
    return results


def written_files(args: BenchArguments, results: dict) -> list[str]:
    """Every file and folder the benchmark writes, for the end of its output."""
    stem = Path(args.results_dir, args.run_name)
    out = Path(args.output_dir)
    files = [f"{stem}.json  (records, settings, learning rates, timings)", f"{stem}.md  (the report)",
             f"{stem}-curves.png, {stem}-paired.png  (plots)"]
    if "inspection" in results:
        inspection = results["inspection"]
        for name, a in inspection["adapters"].items():
            folder = Path(args.results_dir, a["files"]["markdown"]).parent
            files.append(f"{folder}/  (inspection of the {name} adapter: "
                         + ", ".join(Path(f).name for f in a["files"].values()) + ")")
    files += [f"{out / 'adapters'}/<method>/n<N>-seed<seed>/  ({len(results['runs'])} trained adapters or models)",
              f"{out}/base-{results['world']['key']}/  (a copy of the base model and tokenizer)",
              f"{Path(args.cache_dir).expanduser()}/{results['world']['key']}/  (the cached world: corpus, base model)",
              f"the Hugging Face cache  (the world's SAEs, repo peft-sails-bench/world-{results['world']['key']})"]
    return files


def cli(argv: list[str] | None = None, world_config: WorldConfig | None = None) -> None:
    """`peft-sails bench`: run, then print the results tables and every file written (`world_config`: for tests)."""
    parser = HfArgumentParser(BenchArguments, description=__doc__.split("\n")[0])
    (args,) = parser.parse_args_into_dataclasses(argv)
    with quiet_libraries(args.verbose), (contextlib.nullcontext() if args.verbose else repeated_runs()):
        results = run_bench(args, world_config)
    tables, _ = summary_tables(results)
    print(f"\n{tables}")
    print(f"Records: {len(results['records'])}. Files:")
    for line in written_files(args, results):
        print(f"  {line}")
