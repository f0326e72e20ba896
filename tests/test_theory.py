"""Fast tests of benchmarks/theory.py: the generative model, the estimators, their closed-form limits, quick mode."""

import importlib.util
import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "theory.py"


@pytest.fixture(scope="module")
def theory():
    spec = importlib.util.spec_from_file_location("sails_theory_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def test_generator_is_deterministic_given_a_seed(theory):
    world = theory.World(d=16, n_features=64)
    directions = theory.feature_directions(world, seed=3)
    np.testing.assert_array_equal(directions, theory.feature_directions(world, seed=3))
    assert not np.allclose(directions, theory.feature_directions(world, seed=4))
    np.testing.assert_allclose(np.linalg.norm(directions, axis=1), 1.0, rtol=1e-12)
    first = theory.sample(world, directions, 500, seed=7)
    for a, b in zip(first, theory.sample(world, directions, 500, seed=7)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], theory.sample(world, directions, 500, seed=8)[0])


def test_generator_has_the_specified_sparsity_and_class_shift(theory):
    world = theory.World(d=16, n_features=64, noise=0.0)
    directions = theory.feature_directions(world, seed=0)
    n = 20_000
    xa, xu, ca, cu = theory.sample(world, directions, n, seed=0, return_codes=True)
    np.testing.assert_allclose(xa, ca @ directions, atol=1e-4)  # noise 0: x is exactly the superposition of codes
    active = ca[ca > 0]
    assert active.min() >= 0.5 and active.max() <= 1.5
    rate_a, rate_u = (ca > 0).mean(0), (cu > 0).mean(0)
    tol = lambda p: 4 * math.sqrt(p * (1 - p) / n)  # noqa: E731
    expected_a, expected_u = world.rates()
    assert expected_a[0] == 0.20 and expected_u[0] == 0.02  # the safety feature
    np.testing.assert_array_equal(expected_a[1:5], 0.10)  # four confounders
    np.testing.assert_array_equal(expected_u[1:5], 0.04)
    np.testing.assert_array_equal(expected_a[5:], expected_u[5:])  # everything else: no class shift
    for got, expected in ((rate_a, expected_a), (rate_u, expected_u)):
        assert np.all(np.abs(got - expected) <= [tol(p) for p in expected])
    assert abs((ca > 0).sum(1).mean() - expected_a.sum()) < 0.05  # L0
    assert world.expected_l0() == pytest.approx((expected_a.sum() + expected_u.sum()) / 2)


def test_settings_share_their_random_numbers(theory):
    """With and without confounders, the same seed draws the same uniforms: only confounder columns differ."""
    world = theory.World(d=16, n_features=64)
    directions = theory.feature_directions(world, seed=0)
    _, _, ca, cu = theory.sample(world, directions, 2000, seed=1, return_codes=True)
    _, _, ca0, cu0 = theory.sample(replace(world, n_confounders=0), directions, 2000, seed=1, return_codes=True)
    for c, c0 in ((ca, ca0), (cu, cu0)):
        np.testing.assert_array_equal(c[:, 5:], c0[:, 5:])
        np.testing.assert_array_equal(c[:, 0], c0[:, 0])
        assert not np.array_equal(c[:, 1:5], c0[:, 1:5])


def test_angle_is_sign_and_scale_invariant(theory):
    rng = np.random.default_rng(0)
    u, v = rng.standard_normal(8), rng.standard_normal(8)
    assert theory.angle_deg(u, v) == pytest.approx(theory.angle_deg(u, -v))
    assert theory.angle_deg(u, v) == pytest.approx(theory.angle_deg(-3 * u, 0.5 * v))
    assert theory.angle_deg(u, -2 * u) == pytest.approx(0.0, abs=1e-5)
    assert theory.angle_deg(np.eye(3)[0], np.eye(3)[1]) == pytest.approx(90.0)
    assert theory.angle_deg(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(45.0)
    assert 0 <= theory.angle_deg(u, v) <= 90


def test_difference_of_means_is_consistent_without_confounders(theory):
    """Orthogonal directions, no noise, no confounders: the estimate converges to d_s (closed-form limit: 0)."""
    world = theory.World(d=16, n_features=16, orthogonal=True, noise=0.0, n_confounders=0, safety_rates=(0.5, 0.0))
    directions = theory.feature_directions(world, seed=0)
    np.testing.assert_allclose(directions @ directions.T, np.eye(16), atol=1e-12)
    assert theory.analytic_limits(world, directions)["diff_means"] == pytest.approx(0.0, abs=1e-6)
    small = theory.angle_deg(theory.diff_of_means(*theory.sample(world, directions, 200, seed=0)), directions[0])
    large = theory.angle_deg(theory.diff_of_means(*theory.sample(world, directions, 20_000, seed=0)), directions[0])
    assert large < 2.0 and large < small


@pytest.mark.parametrize("orthogonal", [True, False])
def test_difference_of_means_has_the_analytic_bias_with_confounders(theory, orthogonal):
    world = theory.World(d=16, n_features=16 if orthogonal else 64, orthogonal=orthogonal)
    directions = theory.feature_directions(world, seed=0)
    limit = theory.analytic_limits(world, directions)["diff_means"]
    if orthogonal:  # delta = 0.18 d_s + 0.06 (d_1 + ... + d_4): tan(angle) = 0.06 * 2 / 0.18
        assert limit == pytest.approx(math.degrees(math.atan(0.12 / 0.18)), abs=1e-9)
    assert limit > 15
    got = theory.angle_deg(theory.diff_of_means(*theory.sample(world, directions, 20_000, seed=0)), directions[0])
    assert got == pytest.approx(limit, abs=3.0)


def test_pca_of_paired_differences_approaches_its_closed_form_limit(theory):
    world = theory.World(d=16, n_features=64, n_confounders=0)
    directions = theory.feature_directions(world, seed=0)
    xa, xu = theory.sample(world, directions, 20_000, seed=0)
    got = theory.angle_deg(theory.pca_of_paired_differences(xa, xu), directions[0])
    assert got == pytest.approx(theory.analytic_limits(world, directions)["pca_diffs"], abs=5.0)
    cov = np.cov(xa.T.astype(np.float64))  # the closed-form class covariance matches the samples
    expected = theory.population_covariance(world, directions, world.rates()[0])
    assert np.abs(cov - expected).max() < 0.02


def test_sae_route_recovers_the_planted_feature_in_an_easy_world(theory):
    """Orthogonal features (no superposition): a small TopK SAE trained with sae-lens finds s, and SAILS scoring
    (FeatureStats + rank_features) picks it."""
    world = theory.World(d=16, n_features=16, orthogonal=True, n_confounders=2)
    directions = theory.feature_directions(world, seed=0)
    xa, xu = (torch.from_numpy(x) for x in theory.sample(world, directions, 5000, seed=0))
    recipe = theory.SaeRecipe(d_sae=32, k=2, steps=1000, batch_size=512)
    sae = theory.train_sae(torch.cat([xa, xu]), recipe, seed=0)
    direction, chosen = theory.sae_direction(sae, theory.feature_stats(sae, xa, xu), top_k=1, min_firing_rate=0.01)
    assert chosen[0]["delta"] > 0 and chosen[0]["rho"] > 0.5
    assert theory.angle_deg(direction, directions[0]) < 10


def test_summary_reports_mean_and_t_interval(theory):
    rows = [{"method": "diff_means", "confounders": False, "n": 100, "seed": s, "angle_deg": a}
            for s, a in enumerate([1.0, 2.0, 3.0])]
    (row,) = theory.summarize(rows)
    assert row["mean_deg"] == 2.0 and row["seeds"] == 3
    assert row["ci95_deg"] == pytest.approx(4.303 * 1.0 / math.sqrt(3), abs=1e-3)


def test_quick_mode_runs_end_to_end(theory, tmp_path):
    report = theory.main(["--quick", "--seeds", "1", "--output_dir", str(tmp_path)])
    saved = json.loads((tmp_path / "theory-quick.json").read_text())
    assert saved["summary"] == report["summary"]
    assert (tmp_path / "theory-quick.png").stat().st_size > 10_000
    assert "difference of means" in (tmp_path / "theory-quick.md").read_text()
    cells = {(r["method"], r["confounders"], r["n"]) for r in saved["measurements"]}
    assert cells == {(m, c, n) for m in theory.METHODS for c in (False, True) for n in (1_000, 10_000)}
    assert all(0 <= r["angle_deg"] <= 90 for r in saved["measurements"])
    assert {r["method"] for r in saved["analytic_limits"]} == {"diff_means", "pca_diffs"}
    (tmp_path / "theory-quick.md").unlink()
    theory.main(["--replot", str(tmp_path / "theory-quick.json")])  # redraws from the JSON alone
    assert "difference of means" in (tmp_path / "theory-quick.md").read_text()


def test_help_runs():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True).stdout
    assert "--quick" in out and "--seeds" in out and "--output_dir" in out
