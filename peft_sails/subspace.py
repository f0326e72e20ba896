"""Stage 2: an orthonormal basis of the selected features' decoder directions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

logger = logging.getLogger(__name__)


@dataclass
class Subspace:
    """An `[r, d]` basis with orthonormal rows, and how it was obtained."""

    basis: torch.Tensor
    n_threshold: int  # principal directions needed to reach the variance threshold
    n_pca: int  # rows of `basis` that are principal directions of the decoder rows
    variance_kept: float  # share of the decoder rows' variance inside those `n_pca` rows
    explained: torch.Tensor  # explained-variance ratio of every principal direction
    readers: Optional["Subspace"] = None  # two-sided SAILS: the readers' own basis (from `reader_features`)

    @property
    def n_random(self) -> int:
        return self.basis.shape[0] - self.n_pca

    def basis_for(self, role: str) -> torch.Tensor:
        """The basis of the modules of `role` ("reader" or "writer"): the readers' own one when the subspace is
        two-sided, else `basis` for both."""
        return self.readers.basis if role == "reader" and self.readers is not None else self.basis


def principal_directions(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Uncentred PCA (SVD) of unit-normalised rows: directions `[k, d]` and explained-variance ratios `[k]`."""
    rows = rows.double()
    norms = rows.norm(dim=1, keepdim=True)
    rows = rows[norms.squeeze(1) > 0] / norms[norms.squeeze(1) > 0]
    if rows.shape[0] == 0:
        raise ValueError("All selected decoder rows are zero; the SAE has dead decoder directions.")
    _, s, vh = torch.linalg.svd(rows, full_matrices=False)
    var = s.square()
    keep = s > s[0] * 1e-6  # drop numerically null directions
    return vh[keep], (var / var.sum())[keep]


def directions_for_variance(explained: torch.Tensor, threshold: float) -> int:
    """Smallest number of leading directions whose explained variance reaches `threshold`."""
    cumulative = torch.cumsum(explained, 0)
    return int(torch.searchsorted(cumulative, torch.tensor(threshold - 1e-9, dtype=cumulative.dtype)).item()) + 1


def orthonormalize_rows(rows: torch.Tensor) -> torch.Tensor:
    """QR with a sign convention (positive diagonal of R), so the result is deterministic."""
    q, r = torch.linalg.qr(rows.T)
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return (q * signs).T


def build_subspace(
    decoder_rows: torch.Tensor, variance_threshold: float, r: int, fill: str = "pca", seed: int = 0
) -> Subspace:
    """Build the SAILS basis from stacked decoder rows `[n_features, d]` and fit it to adapter rank `r`.

    Rows are normalised to unit length, then PCA (uncentred: decoder rows are directions from the origin, and
    centring would remove their shared direction) keeps the fewest principal directions reaching
    `variance_threshold`, and QR makes them orthonormal. The rule for rank `r`:

    - more directions than `r`: the leading `r` are kept (a warning gives the variance they keep);
    - fewer than `r`: `fill="pca"` adds the next principal directions of the same rows (still inside the
      features' span); `fill="random"` (or running out of directions) adds seeded random directions orthogonal
      to the basis. A warning says which.
    """
    d = decoder_rows.shape[1]
    if r > d:
        raise ValueError(f"r={r} is larger than the residual stream width {d}; choose r <= {d}.")
    directions, explained = principal_directions(decoder_rows)
    n_threshold = directions_for_variance(explained, variance_threshold)
    if n_threshold > r:
        logger.warning(
            "variance_threshold=%s needs %d directions but r=%d: keeping the leading %d (%.1f%% of the variance). "
            "Raise r to %d to keep them all.",
            variance_threshold, n_threshold, r, r, 100 * float(explained[:r].sum()), n_threshold,
        )
    n_pca = min(r, n_threshold) if fill == "random" else min(r, directions.shape[0])
    rows = directions[:n_pca]
    if n_pca < r:
        generator = torch.Generator().manual_seed(seed)
        extra = torch.randn(r - n_pca, d, generator=generator, dtype=rows.dtype)
        extra -= (extra @ rows.T) @ rows
        rows = torch.cat([rows, extra])
    if n_threshold < r:
        logger.warning(
            "variance_threshold=%s gives %d directions but r=%d: %d rows are the next principal directions of the "
            "features and %d are random directions orthogonal to them (subspace_fill=%r).",
            variance_threshold, n_threshold, r, n_pca - n_threshold, r - n_pca, fill,
        )
    return Subspace(
        basis=orthonormalize_rows(rows).float(),
        n_threshold=n_threshold,
        n_pca=n_pca,
        variance_kept=float(explained[:n_pca].sum()),
        explained=explained.float(),
    )
