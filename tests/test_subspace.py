"""Stage 2: orthonormal basis, variance kept, and the rule for fewer or more directions than r."""

import logging

import pytest
import torch

from conftest import in_span as _in_span

from peft_sails import build_subspace


def _rows(n=40, d=32, rank=10, seed=0):
    """Exactly rank-`rank` rows with decaying principal variances, so spans are testable."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -1.5, rank)
    return (torch.randn(n, rank, generator=g) * scales) @ torch.randn(rank, d, generator=g)


def test_basis_is_orthonormal_and_keeps_variance():
    rows = _rows()
    sub = build_subspace(rows, variance_threshold=0.8, r=4)
    assert torch.allclose(sub.basis @ sub.basis.T, torch.eye(4), atol=1e-5)
    assert sub.explained[: sub.n_threshold].sum() >= 0.8 - 1e-6
    assert sub.n_threshold == 1 or sub.explained[: sub.n_threshold - 1].sum() < 0.8
    assert _in_span(sub.basis, rows)


def test_more_directions_than_r_keeps_leading_and_warns(caplog):
    rows = _rows()
    with caplog.at_level(logging.WARNING):
        sub = build_subspace(rows, variance_threshold=0.99, r=3)
    assert sub.n_threshold > 3 and sub.basis.shape == (3, 32)
    assert sub.variance_kept == pytest.approx(float(sub.explained[:3].sum()))
    assert "Raise r" in caplog.text


def test_fewer_directions_than_r_fill_rules(caplog):
    rows = _rows()
    with caplog.at_level(logging.WARNING):
        pca = build_subspace(rows, variance_threshold=0.5, r=8, fill="pca")
    assert pca.n_threshold < 8 and "next principal directions" in caplog.text
    assert pca.n_pca == 8 and _in_span(pca.basis, rows)  # still inside the features' span
    rnd = build_subspace(rows, variance_threshold=0.5, r=8, fill="random", seed=3)
    assert rnd.n_pca == rnd.n_threshold and rnd.n_random == 8 - rnd.n_threshold
    assert torch.allclose(rnd.basis @ rnd.basis.T, torch.eye(8), atol=1e-5)
    assert torch.allclose(rnd.basis[: rnd.n_pca], pca.basis[: rnd.n_pca], atol=1e-6)
    assert not _in_span(rnd.basis[rnd.n_pca:], rows, tol=1e-2)
    assert pca.n_threshold < 8


def test_runs_out_of_directions_fills_randomly():
    rows = torch.eye(32)[:2] * 3  # only two directions exist
    sub = build_subspace(rows, variance_threshold=0.8, r=5)
    assert sub.n_pca == 2 and sub.n_random == 3
    assert torch.allclose(sub.basis @ sub.basis.T, torch.eye(5), atol=1e-5)


def test_deterministic_and_r_too_large():
    rows = _rows()
    assert torch.equal(build_subspace(rows, 0.8, 4).basis, build_subspace(rows, 0.8, 4).basis)
    with pytest.raises(ValueError, match="r=40 is larger than the residual stream width 32"):
        build_subspace(rows, 0.8, 40)
