"""Synthetic superposition experiment: recover a planted "safety" feature direction from an SAE, or directly.

    OMP_NUM_THREADS=1 python benchmarks/theory.py            # ~6 min on one core; writes benchmarks/results/theory.*
    OMP_NUM_THREADS=1 python benchmarks/theory.py --quick    # tiny sweep (< 1 min): benchmarks/results/theory-quick.*

The paper (SAILS, arXiv 2512.23260) argues that finding a safety direction through SAE features has an error that
can be made arbitrarily small, while finding it directly from superposed activations has an error floor. This
script measures both as the number of samples grows, in a generative model where the truth is known.

Generative model (one "world" per seed). `m` feature directions, unit vectors drawn at random in R^d (m > d, so they
are not orthogonal: superposition). A sample is x = sum_i a_i d_i + noise * N(0, I), with sparse nonnegative codes
a_i = Bernoulli(p_i) * Uniform(0.5, 1.5), independent across features. Samples come in two classes, "aligned" and
"unaligned", of n/2 each. Feature 0 is the planted safety feature s: it fires with probability 0.20 on aligned and
0.02 on unaligned samples. Features 1..c are confounders: their rate also shifts with the class (0.10 vs 0.04), as
"harmful topic" features would co-occur with refusals. Every other feature fires with probability 0.03 in both
classes. With c = 0 only s differs between the classes.

Estimators, each scored by the angle between its unit vector and d_s (sign-invariant: arccos |cos|):
- sae: a TopK SAE (sae-lens `SAETrainer`, `TopKTrainingSAE`) trained on the pooled activations, latents scored
  exactly as SAILS does (`peft_sails.selection.FeatureStats` + `rank_features`: delta and rho on the two classes),
  the top latent's decoder row taken through SAILS stage 2 (`peft_sails.subspace.build_subspace`, r=1).
- diff_means: mean(aligned) - mean(unaligned) of the raw activations.
- pca_diffs: first (uncentred) principal direction of the differences of randomly paired samples,
  x_aligned[i] - x_unaligned[perm(i)] (the samples have no natural pairing).

Both direct estimators have a closed-form n -> infinity limit, written to the JSON and drawn on the plot:
diff_means -> sum_i (p_i^aligned - p_i^unaligned) E[a] d_i, which is d_s itself only when c = 0; pca_diffs -> the
top eigenvector of delta delta^T + Cov(aligned) + Cov(unaligned), which is not d_s even when c = 0.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
SAFETY = 0  # index of the planted safety feature; confounders are 1..n_confounders
METHODS = ("sae", "sae_any_rate", "diff_means", "pca_diffs")
LABELS = {"sae": "(a) SAE, SAILS scoring, min_firing_rate 0.01",
          "sae_any_rate": "(a) SAE, SAILS scoring, min_firing_rate 0 (default)",
          "diff_means": "(b) difference of means", "pca_diffs": "(b) PCA of paired differences"}
COLORS = {"sae": "tab:blue", "sae_any_rate": "tab:cyan", "diff_means": "tab:red", "pca_diffs": "tab:orange"}
STYLES = {"sae": "o-", "sae_any_rate": "s--", "diff_means": "o-", "pca_diffs": "o-"}
CHUNK = 65_536  # rows generated at a time; fixed, so the samples do not depend on memory settings


# ----------------------------------------------------------------------------------------------- generative model

@dataclass(frozen=True)
class World:
    """The generative model's parameters (the directions themselves are drawn per seed)."""

    d: int = 32
    n_features: int = 128
    base_rate: float = 0.03  # firing probability of every feature that does not depend on the class
    safety_rates: tuple[float, float] = (0.20, 0.02)  # (aligned, unaligned)
    n_confounders: int = 4
    confounder_rates: tuple[float, float] = (0.10, 0.04)  # (aligned, unaligned)
    magnitude: tuple[float, float] = (0.5, 1.5)  # a firing feature's activation ~ Uniform(low, high)
    noise: float = 0.05  # std of isotropic Gaussian noise per dimension
    orthogonal: bool = False  # orthonormal directions (needs n_features <= d): no superposition

    def __post_init__(self):
        if self.n_confounders > self.n_features - 1:
            raise ValueError("n_confounders must leave the safety feature apart: at most n_features - 1.")
        if self.orthogonal and self.n_features > self.d:
            raise ValueError(f"orthogonal directions need n_features <= d, got {self.n_features} > {self.d}.")

    def rates(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-feature firing probabilities `[m]` on aligned and on unaligned samples."""
        aligned = np.full(self.n_features, self.base_rate)
        unaligned = aligned.copy()
        aligned[SAFETY], unaligned[SAFETY] = self.safety_rates
        confounders = slice(1, 1 + self.n_confounders)
        aligned[confounders], unaligned[confounders] = self.confounder_rates
        return aligned, unaligned

    @property
    def mean_magnitude(self) -> float:
        return (self.magnitude[0] + self.magnitude[1]) / 2

    @property
    def second_moment(self) -> float:
        low, high = self.magnitude
        return (low * low + low * high + high * high) / 3

    def expected_l0(self) -> float:
        """Expected number of active features per sample, over both classes."""
        aligned, unaligned = self.rates()
        return float((aligned.sum() + unaligned.sum()) / 2)


def feature_directions(world: World, seed: int) -> np.ndarray:
    """`[m, d]` unit directions, a function of `seed` only (the same for every n and confounder setting)."""
    rng = np.random.default_rng([seed, 0])
    if world.orthogonal:
        q, _ = np.linalg.qr(rng.standard_normal((world.d, world.d)))
        return q.T[: world.n_features].copy()
    directions = rng.standard_normal((world.n_features, world.d))
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def sample_codes(world: World, rates: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`[n, m]` sparse nonnegative codes: Bernoulli(rates) * Uniform(magnitude)."""
    fire = rng.random((n, world.n_features)) < rates
    return fire * rng.uniform(*world.magnitude, size=(n, world.n_features))


def sample(world: World, directions: np.ndarray, n_per_class: int, seed: int,
           return_codes: bool = False) -> tuple[np.ndarray, ...]:
    """Activations `(x_aligned, x_unaligned)`, each `[n_per_class, d]` float32 (and their codes if asked).

    Deterministic given `seed`. The random draws do not depend on the rates, so two worlds that differ only in
    their rates (with and without confounders) see the same uniforms: common random numbers, a paired comparison.
    """
    rng = np.random.default_rng([seed, 1])
    out, codes = [], []
    for rates in world.rates():
        parts, code_parts = [], []
        for start in range(0, n_per_class, CHUNK):
            a = sample_codes(world, rates, min(CHUNK, n_per_class - start), rng)
            x = a @ directions + world.noise * rng.standard_normal((a.shape[0], world.d))
            parts.append(x.astype(np.float32))
            if return_codes:
                code_parts.append(a.astype(np.float32))
        out.append(np.concatenate(parts))
        if return_codes:
            codes.append(np.concatenate(code_parts))
    return (*out, *codes) if return_codes else tuple(out)


# ------------------------------------------------------------------------------------------------------ estimators

def angle_deg(u: np.ndarray, v: np.ndarray) -> float:
    """Angle in degrees between the lines spanned by `u` and `v` (sign-invariant, in [0, 90])."""
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    cos = abs(float(u @ v)) / (np.linalg.norm(u) * np.linalg.norm(v))
    return math.degrees(math.acos(min(1.0, cos)))


def diff_of_means(x_aligned: np.ndarray, x_unaligned: np.ndarray) -> np.ndarray:
    """Unit vector along mean(aligned) - mean(unaligned)."""
    v = x_aligned.mean(0, dtype=np.float64) - x_unaligned.mean(0, dtype=np.float64)
    return v / np.linalg.norm(v)


def pca_of_paired_differences(x_aligned: np.ndarray, x_unaligned: np.ndarray, seed: int = 0) -> np.ndarray:
    """First uncentred principal direction of x_aligned[i] - x_unaligned[perm(i)] over a random pairing."""
    n = min(len(x_aligned), len(x_unaligned))
    perm = np.random.default_rng([seed, 2]).permutation(len(x_unaligned))[:n]
    diffs = x_aligned[:n].astype(np.float64) - x_unaligned[perm].astype(np.float64)
    _, vectors = np.linalg.eigh(diffs.T @ diffs)
    return vectors[:, -1]


def population_difference(world: World, directions: np.ndarray) -> np.ndarray:
    """E[x | aligned] - E[x | unaligned] = sum_i (p_i^a - p_i^u) E[a] d_i: the n -> infinity diff_means vector."""
    aligned, unaligned = world.rates()
    return ((aligned - unaligned) * world.mean_magnitude) @ directions


def population_covariance(world: World, directions: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Cov(x) for one class: sum_i Var(a_i) d_i d_i^T + noise^2 I."""
    variance = rates * world.second_moment - (rates * world.mean_magnitude) ** 2
    return (directions.T * variance) @ directions + world.noise ** 2 * np.eye(world.d)


def analytic_limits(world: World, directions: np.ndarray) -> dict[str, float]:
    """Angle to d_s of each direct estimator as n -> infinity (closed form)."""
    delta = population_difference(world, directions)
    second = np.outer(delta, delta) + sum(population_covariance(world, directions, r) for r in world.rates())
    _, vectors = np.linalg.eigh(second)
    return {"diff_means": angle_deg(delta, directions[SAFETY]), "pca_diffs": angle_deg(vectors[:, -1],
                                                                                          directions[SAFETY])}


@dataclass(frozen=True)
class SaeRecipe:
    """How the SAE is trained and read: the same for every n (only the data change with n)."""

    d_sae: int = 256
    k: int = 4
    steps: int = 1000
    batch_size: int = 1024  # batches are drawn with replacement from the n pooled samples
    lr: float = 3e-3
    lr_end: float = 3e-4
    top_k: int = 1  # latents kept by SAILS scoring; the direction is the first of build_subspace(their rows)
    # method "sae": latents must fire on >= 1% of one side's samples (the planted feature fires on 20% of aligned
    # ones); "sae_any_rate": SAILS' default 0, where any latent silent on one side has rho = 1.
    min_firing_rate: float = 0.01
    variance_threshold: float = 0.8


@contextlib.contextmanager
def _quiet_sae_lens_progress() -> Iterator[None]:
    """sae-lens draws its own progress bar per training run; hide it under ours."""
    import sae_lens.training.sae_trainer as trainer_module

    original = trainer_module.tqdm
    trainer_module.tqdm = functools.partial(original, disable=True)
    try:
        yield
    finally:
        trainer_module.tqdm = original


def train_sae(x: torch.Tensor, recipe: SaeRecipe, seed: int):
    """A TopK SAE trained with sae-lens' `SAETrainer` on `[n, d]` activations (cf. `peft_sails.offline`)."""
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    torch.manual_seed(seed)
    cfg = TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=recipe.d_sae, k=recipe.k)
    cfg.metadata.hook_name = "synthetic"
    cfg.metadata.model_name = "superposition-toy"
    sae = TopKTrainingSAE(cfg)
    generator = torch.Generator().manual_seed(seed)

    def batches() -> Iterator[torch.Tensor]:
        while True:
            yield x[torch.randint(0, x.shape[0], (recipe.batch_size,), generator=generator)]

    trainer_cfg = SAETrainerConfig(
        total_training_samples=recipe.steps * recipe.batch_size, train_batch_size_samples=recipe.batch_size,
        lr=recipe.lr, lr_end=recipe.lr_end, lr_scheduler_name="cosineannealing", device="cpu",
        n_batches_for_norm_estimate=10,
    )
    with _quiet_sae_lens_progress():
        return SAETrainer(trainer_cfg, sae, data_provider=batches()).fit()


def feature_stats(sae, x_aligned: torch.Tensor, x_unaligned: torch.Tensor) -> list:
    """SAILS stage-1 statistics (`FeatureStats`) of the SAE's latents on each class."""
    from peft_sails.selection import FeatureStats

    stats = []
    with torch.no_grad():
        for x in (x_aligned, x_unaligned):
            side = FeatureStats.zeros(sae.cfg.d_sae)
            for start in range(0, len(x), CHUNK):
                side.update(sae.encode(x[start:start + CHUNK]))
            stats.append(side)
    return stats


def sae_direction(sae, stats: list, top_k: int, min_firing_rate: float, variance_threshold: float = 0.8
                  ) -> tuple[np.ndarray, list[dict[str, float]]]:
    """SAILS stages 1-2 on one SAE: rank latents by rho (`rank_features`), keep the top_k, and return the first
    direction of `build_subspace` over their decoder rows (for top_k=1: the top latent's unit decoder row)."""
    from peft_sails.selection import rank_features
    from peft_sails.subspace import build_subspace

    chosen = rank_features(*stats, top_k=top_k, min_firing_rate=min_firing_rate)
    rows = sae.W_dec.detach()[[f["id"] for f in chosen]]
    subspace = build_subspace(rows, variance_threshold, r=1)
    return subspace.basis[0].double().numpy(), chosen


def decoder_cosines(sae, directions: np.ndarray) -> np.ndarray:
    """|cos| between every unit decoder row and every true feature direction, `[d_sae, m]`."""
    w = torch.nn.functional.normalize(sae.W_dec.detach().double(), dim=1).numpy()
    return np.abs(w @ directions.T)


def sae_quality(sae, x: torch.Tensor, directions: np.ndarray) -> dict[str, float]:
    """Explained variance on `x`, and the share of true features that some decoder row matches (|cos| > 0.99)."""
    with torch.no_grad():
        error = (x - sae.decode(sae.encode(x))).square().sum()
        ev = float(1 - error / (x - x.mean(0)).square().sum())
    return {"explained_variance": round(ev, 4),
            "features_matched": round(float((decoder_cosines(sae, directions).max(0) > 0.99).mean()), 4)}


# ------------------------------------------------------------------------------------------------------- the sweep

def run_point(world: World, seed: int, n: int, recipe: SaeRecipe, confounders: bool) -> tuple[list[dict], dict]:
    """All estimators on one sample of size n (n/2 per class); returns measurement rows and SAE diagnostics."""
    directions = feature_directions(world, seed)
    xa, xu = sample(world, directions, n // 2, seed=seed * 1_000_003 + n)
    s = directions[SAFETY]
    rows = [{"method": "diff_means", "angle_deg": angle_deg(diff_of_means(xa, xu), s)},
            {"method": "pca_diffs", "angle_deg": angle_deg(pca_of_paired_differences(xa, xu, seed), s)}]
    ta, tu = torch.from_numpy(xa), torch.from_numpy(xu)
    pooled = torch.cat([ta, tu])
    sae = train_sae(pooled, recipe, seed=seed * 1_000_003 + n)
    stats = feature_stats(sae, ta, tu)
    info = sae_quality(sae, pooled[torch.randperm(len(pooled))[:CHUNK]], directions)
    cosines = decoder_cosines(sae, directions)
    for method, rate in (("sae", recipe.min_firing_rate), ("sae_any_rate", 0.0)):
        direction, chosen = sae_direction(sae, stats, recipe.top_k, rate, recipe.variance_threshold)
        rows.append({"method": method, "angle_deg": angle_deg(direction, s)})
        top = chosen[0]
        info[method] = {**top, "rate_aligned": round(float(stats[0].firing_rate[top["id"]]), 5),
                        "rate_unaligned": round(float(stats[1].firing_rate[top["id"]]), 5),
                        "closest_feature": int(cosines[top["id"]].argmax()),
                        "cos_to_closest": round(float(cosines[top["id"]].max()), 5)}
    for row in rows:
        row.update(confounders=confounders, n=n, seed=seed)
        row["angle_deg"] = round(row["angle_deg"], 4)
    return rows, {"confounders": confounders, "n": n, "seed": seed, **info}


def t_quantile_975(dof: int) -> float:
    try:
        from scipy.stats import t
        return float(t.ppf(0.975, dof))
    except ImportError:  # pragma: no cover
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
        return table.get(dof, 1.96)


def summarize(measurements: list[dict]) -> list[dict]:
    """Mean and 95% t-interval half-width of the angle over seeds, per (method, confounders, n)."""
    groups: dict[tuple, list[float]] = {}
    for row in measurements:
        groups.setdefault((row["method"], row["confounders"], row["n"]), []).append(row["angle_deg"])
    summary = []
    for (method, confounders, n), angles in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        a = np.asarray(angles)
        ci = float(t_quantile_975(len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else None
        summary.append({"method": method, "confounders": confounders, "n": n, "seeds": len(a),
                        "mean_deg": round(float(a.mean()), 3), "ci95_deg": None if ci is None else round(ci, 3),
                        "min_deg": round(float(a.min()), 3), "max_deg": round(float(a.max()), 3)})
    return summary


def chance_angle(d: int, n: int = 200_000) -> float:
    """Mean angle between a fixed line and a uniformly random one in R^d (what a random guess scores)."""
    v = np.random.default_rng(0).standard_normal((n, d))
    return float(np.degrees(np.arccos(np.abs(v[:, 0]) / np.linalg.norm(v, axis=1))).mean())


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    world = report["setup"]["world"]
    for ax, confounders in zip(axes, (False, True)):
        for method in METHODS:
            rows = [r for r in report["summary"] if r["method"] == method and r["confounders"] == confounders]
            if not rows:
                continue
            n = np.array([r["n"] for r in rows])
            mean = np.array([r["mean_deg"] for r in rows])
            ci = np.array([r["ci95_deg"] or 0.0 for r in rows])
            ax.plot(n, mean, STYLES[method], color=COLORS[method], label=LABELS[method], ms=4)
            if method != "sae_any_rate":  # near chance everywhere; its band only clutters the plot
                ax.fill_between(n, np.maximum(mean - ci, 1e-2), mean + ci, color=COLORS[method], alpha=0.2)
            points = [r for r in report["measurements"] if r["method"] == method and r["confounders"] == confounders]
            ax.scatter([r["n"] for r in points], [r["angle_deg"] for r in points], s=6, color=COLORS[method], alpha=0.4)
        for method in ("diff_means", "pca_diffs"):
            limits = [r["angle_deg"] for r in report["analytic_limits"]
                      if r["method"] == method and r["confounders"] == confounders]
            if limits:
                ax.axhline(float(np.mean(limits)), color=COLORS[method], ls="--", lw=1,
                           label=f"n→∞ limit of {method} (closed form)")
        ax.axhline(report["chance_angle_deg"], color="gray", ls=":", lw=1, label="random direction")
        if not confounders:
            ax.text(0.98, 0.02, "n→∞ limit of diff_means: 0° (off this log axis)", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=7, color=COLORS["diff_means"])
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(0.3, 95)
        ax.yaxis.set_major_locator(FixedLocator([0.5, 1, 2, 5, 10, 20, 45, 90]))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel("samples n (aligned + unaligned)")
        title = (f"{world['n_confounders']} confounders (rates {world['confounder_rates'][0]:g} vs "
                 f"{world['confounder_rates'][1]:g})" if confounders else "no confounders (only s shifts)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("angle to the true safety direction (degrees)")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Recovering a planted feature: d={world['d']}, m={world['n_features']} features in superposition, "
                 f"{report['setup']['seeds']} seeds (mean, 95% CI, each seed as a dot)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(report: dict) -> str:
    setup, world, recipe = report["setup"], report["setup"]["world"], report["setup"]["sae_recipe"]
    lines = [
        "# Theory experiment: SAE-based vs direct recovery of a planted safety direction",
        "",
        f"Written by `{setup['command']}` in {report['runtime_s']:.0f} s ({setup['machine']}).",
        "",
        f"World: d={world['d']}, m={world['n_features']} random unit directions (superposition), codes "
        f"Bernoulli(p) x Uniform{tuple(world['magnitude'])}, noise std {world['noise']}, base rate {world['base_rate']}, "
        f"expected L0 {report['expected_l0']:.2f}. Safety feature s: rate {world['safety_rates'][0]} aligned vs "
        f"{world['safety_rates'][1]} unaligned. Confounders: {world['n_confounders']} features at "
        f"{world['confounder_rates'][0]} vs {world['confounder_rates'][1]} (else the base rate in both classes). "
        f"SAE: TopK (sae-lens), d_sae={recipe['d_sae']}, k={recipe['k']}, {recipe['steps']} steps of "
        f"{recipe['batch_size']} samples drawn with replacement from the n samples, lr {recipe['lr']:g} -> "
        f"{recipe['lr_end']:g} (cosine); SAILS scoring (rho; `sae`: min_firing_rate={recipe['min_firing_rate']:g}, "
        f"`sae_any_rate`: 0, the package default), top {recipe['top_k']} latent(s). Seeds: {setup['seeds']}. Angles in degrees, sign-invariant, mean ± 95% "
        f"t-interval over seeds. A random direction scores {report['chance_angle_deg']:.1f}°.",
        "",
    ]
    ns = sorted({r["n"] for r in report["summary"]})
    for confounders in (False, True):
        cell = {(r["method"], r["n"]): r for r in report["summary"] if r["confounders"] == confounders}
        limits = {m: np.mean([r["angle_deg"] for r in report["analytic_limits"]
                              if r["method"] == m and r["confounders"] == confounders]) for m in ("diff_means", "pca_diffs")}
        lines += [f"**{'With' if confounders else 'Without'} confounders**", "",
                  "| n | " + " | ".join(LABELS[m] for m in METHODS) + " |",
                  "| ---: | " + " | ".join("---:" for _ in METHODS) + " |"]
        for n in ns:
            cells = []
            for m in METHODS:
                r = cell.get((m, n))
                cells.append("" if r is None else f"{r['mean_deg']:.1f}" + (
                    f" ± {r['ci95_deg']:.1f}" if r["ci95_deg"] is not None else ""))
            lines.append(f"| {n:,} | " + " | ".join(cells) + " |")
        lines.append("| n → ∞ (closed form) | " + " | ".join(f"{limits[m]:.1f}" if m in limits else "" for m in METHODS)
                     + " |")
        runs = [r for r in report["sae_runs"] if r["confounders"] == confounders]
        lines.append("")
        for method in ("sae", "sae_any_rate"):
            wrong = [r["n"] for r in runs if r[method]["closest_feature"] != SAFETY]
            per_n = ", ".join(f"{wrong.count(n)} at n={n:,}" for n in ns if wrong.count(n))
            lines.append(f"- `{method}`: the chosen latent is closest to a feature other than s in {len(wrong)} of "
                         f"{len(runs)} runs" + (f" ({per_n})" if wrong else "") + ".")
        ev = {n: np.mean([r["explained_variance"] for r in runs if r["n"] == n]) for n in ns}
        matched = {n: np.mean([r["features_matched"] for r in runs if r["n"] == n]) for n in ns}
        lines += ["- SAE explained variance / share of the true features matched by a decoder row (|cos| > 0.99), "
                  "mean over seeds: " + ", ".join(f"n={n:,}: {ev[n]:.2f} / {matched[n]:.2f}" for n in ns) + ".", ""]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------- CLI

def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="Tiny sweep for CI (d=16, m=64, n in {1e3, 1e4}, 2 seeds, 200 SAE steps): < 1 minute.")
    parser.add_argument("--seeds", type=int, default=None, help="Number of seeds (worlds) per point (default 5; 2 quick).")
    parser.add_argument("--ns", type=int, nargs="+", default=None,
                        help="Sample counts (default 1e3, 3e3, ..., 1e6; quick: 1e3 1e4).")
    parser.add_argument("--output_dir", type=Path, default=RESULTS)
    parser.add_argument("--name", default=None, help="File stem (default 'theory', or 'theory-quick' with --quick).")
    parser.add_argument("--no_plot", action="store_true", help="Write the JSON and the table only.")
    parser.add_argument("--replot", type=Path, metavar="JSON",
                        help="Only redraw the PNG and rewrite the table of a saved run (next to its JSON).")
    world = parser.add_argument_group("generative model")
    world.add_argument("--d", type=int, default=None, help="Dimension (default 32; quick 16).")
    world.add_argument("--n_features", type=int, default=None, help="Number of features m (default 4d).")
    world.add_argument("--base_rate", type=float, default=World.base_rate)
    world.add_argument("--safety_rates", type=float, nargs=2, default=World.safety_rates, metavar=("ALIGNED", "UNALIGNED"))
    world.add_argument("--n_confounders", type=int, default=World.n_confounders,
                       help="Confounders in the confounded setting (the other setting has none).")
    world.add_argument("--confounder_rates", type=float, nargs=2, default=World.confounder_rates,
                       metavar=("ALIGNED", "UNALIGNED"))
    world.add_argument("--noise", type=float, default=World.noise)
    sae = parser.add_argument_group("SAE recipe (the same for every n)")
    sae.add_argument("--d_sae", type=int, default=None, help="SAE width (default 2m).")
    sae.add_argument("--k", type=int, default=SaeRecipe.k, help="TopK k (default 4, about the expected L0).")
    sae.add_argument("--sae_steps", type=int, default=None, help="Training steps (default 1000; quick 200).")
    sae.add_argument("--batch_size", type=int, default=SaeRecipe.batch_size)
    sae.add_argument("--lr", type=float, default=SaeRecipe.lr)
    sae.add_argument("--top_k", type=int, default=SaeRecipe.top_k,
                     help="Latents kept by SAILS scoring; the direction is the first of build_subspace on their rows.")
    sae.add_argument("--min_firing_rate", type=float, default=SaeRecipe.min_firing_rate,
                     help="For method 'sae' (method 'sae_any_rate' always uses 0, the SAILS default).")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> tuple[World, SaeRecipe, list[int], int, str]:
    d = args.d or (16 if args.quick else 32)
    m = args.n_features or 4 * d
    world = World(d=d, n_features=m, base_rate=args.base_rate, safety_rates=tuple(args.safety_rates),
                  n_confounders=args.n_confounders, confounder_rates=tuple(args.confounder_rates), noise=args.noise)
    recipe = SaeRecipe(d_sae=args.d_sae or 2 * m, k=args.k, steps=args.sae_steps or (200 if args.quick else 1000),
                       batch_size=args.batch_size, lr=args.lr, lr_end=args.lr / 10, top_k=args.top_k,
                       min_firing_rate=args.min_firing_rate)
    ns = args.ns or ([1_000, 10_000] if args.quick else [1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000])
    seeds = args.seeds or (2 if args.quick else 5)
    name = args.name or ("theory-quick" if args.quick else "theory")
    return world, recipe, sorted(ns), seeds, name


def main(argv: Optional[list[str]] = None) -> dict:
    import sys

    from tqdm.auto import tqdm

    args = parse_args(argv)
    if args.replot:
        report = json.loads(args.replot.read_text())
        plot(report, args.replot.with_suffix(".png"))
        args.replot.with_suffix(".md").write_text(markdown(report))
        return report
    world, recipe, ns, seeds, name = configure(args)
    worlds = {False: replace(world, n_confounders=0), True: world}
    start = time.perf_counter()
    measurements, sae_runs, limits = [], [], []
    for seed in range(seeds):
        directions = feature_directions(world, seed)
        for confounders, w in worlds.items():
            for method, angle in analytic_limits(w, directions).items():
                limits.append({"method": method, "confounders": confounders, "seed": seed, "angle_deg": round(angle, 4)})
    jobs = [(seed, n, confounders) for n in ns for seed in range(seeds) for confounders in (False, True)]
    progress = tqdm(jobs, desc="theory sweep", unit="run")
    for seed, n, confounders in progress:
        progress.set_postfix(n=n, seed=seed, confounders=confounders)
        rows, info = run_point(worlds[confounders], seed, n, recipe, confounders)
        measurements += rows
        sae_runs.append(info)
    report = {
        "setup": {"world": asdict(world), "sae_recipe": asdict(recipe), "ns": ns, "seeds": seeds,
                  "settings": {"no confounders": "the same world with n_confounders=0", "confounders": "as in world"},
                  "command": " ".join(["python benchmarks/theory.py", *(sys.argv[1:] if argv is None else argv)]),
                  "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                             f"{torch.get_num_threads()} thread(s)"},
        "runtime_s": round(time.perf_counter() - start, 1),
        "expected_l0": world.expected_l0(),
        "chance_angle_deg": round(chance_angle(world.d), 3),
        "summary": summarize(measurements),
        "analytic_limits": limits,
        "measurements": measurements,
        "sae_runs": sae_runs,
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / f"{name}.json").write_text(json.dumps(report, indent=1))
    if not args.no_plot:
        plot(report, args.output_dir / f"{name}.png")
    (args.output_dir / f"{name}.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
