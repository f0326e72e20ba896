"""`peft-sails bench`: SAILS against plain LoRA, PEFT's data-driven inits and controls, on a world built here (no
download).

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 peft-sails bench --quick            # <= 10 min on 2 cores, prints the table
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 peft-sails bench                    # full mode, today's world
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 peft-sails bench --world hard --pilot  # plain LoRA only: choose N
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 peft-sails bench --world hard       # full mode, the unsaturated world

Stages: build (or load from the cache) the world, pick each method's learning rate on the validation split,
train every (method, N, seed), score the test splits along the way, write records, report and plots. Finished
runs are kept in the results file: running the same command again resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch

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
from .corpus import CorpusConfig
from .report import pilot_choice
from .world import World, WorldConfig, build_world

logger = logging.getLogger(__name__)
PILOT_N = [1, 2, 4, 8, 16]
HARD_N = [1, 4]  # the pilot chose N = 1 (benchmarks/results/hard-pilot.md), and 4 x N
CORE = ["lora", "sails", "direct", "random", "refusal-dir", "full", "sails-prompt", "sails-two-sided", "eva", "pissa",
        "olora", "corda", "loraga", "lora-mlp-up"]
ABLATIONS = [m for m in METHODS if m not in CORE]
QUICK = {"methods": ["lora", "sails", "random", "direct"], "ablations": [], "n_train": [4], "seeds": 3,
         "sweep_seeds": 1, "lr_grid": [2.5e-4, 5e-4, 1e-3], "run_name": "quick", "downstream_steps": 0,
         "id_every": 0, "eval_fractions": [0.1, 0.4, 1.0]}  # scoring is half of a run's time: 3 points keep it <= 10 min
WORLDS = {  # presets: today's world, the unsaturated one, and a larger one for a GPU
    "default": WorldConfig(),
    "hard": WorldConfig(corpus=CorpusConfig(preset="hard", n_pretrain_harmful=3000, n_pretrain_benign=3000),
                        pretrain_steps=1200),
    "gpu": WorldConfig(corpus=CorpusConfig(preset="hard"), hidden_size=768, intermediate_size=1536, num_layers=8,
                       num_heads=12, pretrain_steps=3000, pretrain_batch_size=64, sae_layers=(3, 5), d_sae=8192,
                       sae_k=32, sae_epochs=8),
}
PILOT = {"methods": ["lora"], "ablations": [], "seeds": 3, "downstream_steps": 0}


@dataclass
class BenchArguments:
    quick: bool = field(default=False, metadata={
        "help": f"Small run (<= 10 min on 2 cores): {QUICK}. Explicit flags below are overridden."})
    world: str = field(default="default", metadata={
        "help": f"World preset: {', '.join(WORLDS)}. 'hard': requests where only the verb-object combination is "
        "harmful, 14+ categories, longer prompts; 'gpu': the hard corpus with a 768-wide 8-layer model (use "
        "--device cuda)."})
    pilot: bool = field(default=False, metadata={
        "help": f"Plain LoRA only at every N of --n_train ({PILOT}): writes <run_name>-pilot.json/.md with the "
        "smallest N at which its final OOD safety lies in 50-80%%; the full run's report shows it."})
    device: str = field(default="cpu", metadata={"help": "Where to build the world and train: cpu or cuda."})
    run_name: Optional[str] = field(default=None, metadata={
        "help": "Results go to <results_dir>/<run_name>.json (+ .md, .png); default: 'full' for the default "
        "world, else the world's name."})
    results_dir: str = field(default="benchmarks/results", metadata={"help": "Folder for records, report and plots."})
    output_dir: str = field(default="bench-output", metadata={
        "help": "Every trained adapter (or full model) and a copy of the base model are saved here."})
    cache_dir: str = field(default="~/.cache/peft-sails/bench", metadata={
        "help": "The world (corpus, base model) is cached here; its SAEs go to the Hugging Face cache."})
    methods: list[str] = field(default_factory=lambda: list(CORE), metadata={
        "help": f"Methods run at every N. Known: {', '.join(METHODS)}."})
    ablations: list[str] = field(default_factory=lambda: list(ABLATIONS), metadata={
        "help": "Methods run at the smallest N only."})
    n_train: Optional[list[int]] = field(default=None, metadata={
        "help": "Harmful examples per run (as many benign ones are mixed in); default: the world's (default [4, 32], "
        f"hard {HARD_N}; the pilot: {PILOT_N})."})
    seeds: int = field(default=8, metadata={"help": "Seeds per (method, N); seed i draws the same data for every method."})
    steps: int = field(default=100, metadata={"help": "Optimizer steps per run (batch 16, cosine decay)."})
    lr_grid: list[float] = field(default_factory=lambda: [1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3], metadata={
        "help": "Learning rates swept per adapter method (full fine-tuning sweeps them divided by 10)."})
    sweep_seeds: int = field(default=2, metadata={"help": "Seeds per learning rate in the sweep (other seeds than the test ones)."})
    eval_fractions: list[float] = field(default_factory=lambda: list(TrainSettings.eval_fractions), metadata={
        "help": "Score every test split after these fractions of the steps."})
    id_every: int = field(default=TrainSettings.id_every, metadata={
        "help": "Also score the ID split every this many steps in the first half of training (0: never)."})
    downstream_steps: int = field(default=TrainSettings.downstream_steps, metadata={
        "help": "After alignment at the smallest N, fine-tune each aligned model on benign data for this many steps "
        "and score the test splits again (does alignment last?); 0: skip."})
    rebuild_world: bool = field(default=False, metadata={"help": "Build the world again even if it is cached."})
    hidden_size: Optional[int] = field(default=None, metadata={
        "help": "Width of the base model (d_model; rank is 8, so this sets r/d_model); default: the preset's. "
        "Another width is another world."})
    verbose: bool = field(default=False, metadata={
        "help": "Show the libraries' own progress bars, logs and deprecation warnings (hidden by default)."})

    def world_config(self) -> WorldConfig:
        preset = WORLDS[self.world]
        width = {} if self.hidden_size is None else {
            "hidden_size": self.hidden_size, "intermediate_size": 2 * self.hidden_size,
            "num_heads": max(1, self.hidden_size // 72)}
        return dataclasses.replace(preset, **width, device=self.device)

    def train_settings(self) -> TrainSettings:
        return TrainSettings(steps=self.steps, eval_fractions=tuple(self.eval_fractions), id_every=self.id_every,
                             downstream_steps=self.downstream_steps, device=self.device)

    def __post_init__(self) -> None:
        if self.world not in WORLDS:
            raise ValueError(f"Unknown world {self.world!r}; choose from {list(WORLDS)}.")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"`device` must be 'cpu' or 'cuda', got {self.device!r}.")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda, but torch sees no CUDA device here; use --device cpu.")
        if self.quick and self.pilot:
            raise ValueError("Choose --quick or --pilot, not both.")
        for key, value in (QUICK if self.quick else PILOT if self.pilot else {}).items():
            setattr(self, key, value)
        if self.n_train is None:
            self.n_train = PILOT_N if self.pilot else (HARD_N if self.world != "default" else [4, 32])
        if self.run_name is None:
            self.run_name = ("full" if self.world == "default" else self.world) + ("-pilot" if self.pilot else "")
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
    """Refuse to add runs to a results file made with another world, number of steps or scoring schedule."""
    old = results.get("settings", {})
    mine = {"world": world_key, "steps": args.steps, "eval_fractions": list(args.eval_fractions),
            "id_every": args.id_every, "downstream_steps": args.downstream_steps}
    theirs = {"world": results.get("world", {}).get("key"), "steps": old.get("steps"),
              "eval_fractions": old.get("eval_fractions", list(TrainSettings.eval_fractions)),  # before 0.3: fixed
              "id_every": old.get("id_every", 0), "downstream_steps": old.get("downstream_steps", 0)}  # 0.2: neither
    if results["runs"] and theirs != mine:
        raise ValueError(
            f"{path} holds runs made with {theirs}, but this command runs {mine}; its runs would not be comparable. "
            "Use another --run_name (or --results_dir), or delete that file to start over.")


def _drop_stale_runs(results: dict, lrs: dict[str, float]) -> set[tuple[str, int, int]]:
    """Forget the runs made at a learning rate the sweep no longer picks (the grid was extended), so they run again."""
    stale = {(r["method"], r["n_train"], r["seed"]) for r in results["records"]
             if r["method"] in METHODS and r["learning_rate"] != lrs.get(METHODS[r["method"]].lr_of or r["method"],
                                                                       r["learning_rate"])}
    if stale:
        logger.warning("Running again at their newly swept learning rate: %s.",
                       ", ".join(sorted({f"{m} (N={n})" for m, n, _ in stale})))
        for key in ("records", "runs", "downstream"):
            results[key] = [r for r in results.get(key, []) if (r["method"], r["n_train"], r["seed"]) not in stale]
        if any(m in ("sails", "lora") and s == 0 for m, _, s in stale):
            results.pop("inspection", None)
    return stale


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
    """Overlap of every method's (readers') basis with the harmful-vs-benign request direction, and what the
    features of the SAILS methods fire on."""
    layers = sorted(world.sae_ids)
    direction = prompt_direction(base, tokenizer, next(p.config for p in prepared.values() if p.config), corpus, layers)
    d = base.config.hidden_size
    r = next(iter(prepared.values())).r
    overlaps = {"chance, sqrt(r/d)": round((r / d) ** 0.5, 3)}
    for name, p in prepared.items():
        method = METHODS[name]
        if method.kind == "sails":
            basis = compute_sails_subspace(base, p.config, show_progress=False)[0].basis_for("reader")
        elif method.kind in ("direct", "refusal-dir"):
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
    settings = args.train_settings()
    _check_resumable(results, world.config.key(), args, path)
    results.update(world={"key": world.config.key(), "config": asdict(world.config), **world.stats},
                   settings={**{k: v for k, v in asdict(args).items() if k not in ("output_dir", "cache_dir", "verbose")},
                             "downstream_lr": settings.downstream_lr, "downstream_rows": settings.downstream_rows})
    seconds = results.setdefault("seconds", {})
    seconds.setdefault("world", round(time.perf_counter() - tick, 1))
    base_points = {0: world.stats["base"]}
    names = args.methods + [m for m in args.ablations if m not in args.methods]

    tick = time.perf_counter()
    prepared = {}
    for name in tqdm(names, desc="stage 1-2 per method"):
        prepared[name] = prepare(METHODS[name], world, base, tokenizer, corpus, settings.lora_r, settings.lora_alpha)
    results["selection"] = {name: p.config.features for name, p in prepared.items()
                            if p.config is not None and p.config.features}
    seconds["selection"] = round(time.perf_counter() - tick, 1)
    if "analysis" not in results and any(p.config for p in prepared.values()):  # not for LoRA alone (the pilot)
        results["analysis"] = analyse(prepared, world, base, tokenizer, corpus)

    tick = time.perf_counter()
    scores = results.setdefault("sweep", {})  # {method: {lr: [validation score per sweep seed]}}, kept across runs
    grid = {name: [lr / 10 if METHODS[name].kind == "full" else lr for lr in args.lr_grid]
            for name in names if METHODS[name].lr_of is None}
    sweep = [(name, lr, s) for name, lrs in grid.items() for lr in lrs for s in range(args.sweep_seeds)
             if len(scores.get(name, {}).get(str(lr), [])) <= s]
    for name, lr, s in tqdm(sweep, desc="learning-rate sweep (validation split)"):
        points, _, _ = run_alignment(METHODS[name], prepared[name], base, tokenizer, corpus, min(args.n_train),
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
    _drop_stale_runs(results, lrs)
    _save(path, results)

    done = {(r["method"], r["n_train"], r["seed"]) for r in results["runs"]}
    todo = [(name, n, seed) for n in sorted(args.n_train) for seed in range(args.seeds) for name in names
            if (name in args.methods or n == min(args.n_train)) and (name, n, seed) not in done]
    for name, n, seed in tqdm(todo, desc="alignment runs"):
        tick = time.perf_counter()
        method = METHODS[name]
        lr = lrs[method.lr_of or name]
        downstream = settings.downstream_steps > 0 and n == min(args.n_train)
        points, share, after = run_alignment(
            method, prepared[name], base, tokenizer, corpus, n, seed, lr, settings, TEST_SPLITS, out / "tmp",
            save_dir=out / "adapters" / args.run_name / name / f"n{n}-seed{seed}", downstream=downstream)
        results["records"] += _records(name, n, seed, {**base_points, **points}, share, lr)
        if after is not None:
            results.setdefault("downstream", []).extend(
                {"method": name, "n_train": n, "seed": seed, "split": split, **metrics} for split, metrics in after.items())
        results["runs"].append({"method": name, "n_train": n, "seed": seed, "seconds": round(time.perf_counter() - tick, 1)})
        _save(path, results)
    shutil.rmtree(out / "tmp", ignore_errors=True)

    n, adapters = min(args.n_train), {}
    for name in ("sails", "lora"):
        adapters[name] = out / "adapters" / args.run_name / name / f"n{n}-seed0"
    inspect_dir = path.with_name(f"{args.run_name}-inspect")
    if all(d.exists() for d in adapters.values()) and (
            results.get("inspection", {}).get("n_train") != n or not inspect_dir.exists()):
        tick = time.perf_counter()
        results["inspection"] = {"n_train": n, "seed": 0, "dir": str(inspect_dir),
                                 **inspect_pair(base, tokenizer, corpus, adapters, inspect_dir, path.parent)}
        seconds["inspection"] = round(time.perf_counter() - tick, 1)
        _save(path, results)
    if args.pilot:
        results["pilot"] = {**pilot_choice(results), "seeds": args.seeds}
    elif (pilot_path := path.with_name(f"{args.run_name}-pilot.json")).exists():
        results["pilot"] = json.loads(pilot_path.read_text()).get("pilot", {})
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
    files += [f"{out / 'adapters' / args.run_name}/<method>/n<N>-seed<seed>/  ({len(results['runs'])} trained adapters or models)",
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
