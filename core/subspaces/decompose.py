"""The low-rank decomposition of language means into a language-agnostic vector and a
language-specific subspace (Zhao et al. 2024, Lens §3.1, after Xie et al. 2022; methods.md §8).

Per block, with the K language means as the columns of ``M`` (d x K), all in float64:

    mu = row mean of M;  U S V^T = svd(M - mu 1^T);  r = K - 1
    M' = mu 1^T + U_r S_r V_r^T
    a  = pinv(M')^T 1;   a <- a / ||a||^2                      (the language-agnostic vector)
    specific basis = first r left singular vectors of M' - a 1^T   (rows, orthonormal)

Geometry, for reading the plots: ``M - mu 1^T`` has rank at most K - 1, so ``M' = M`` up to
rounding; ``a`` is then the point of the means' affine hull nearest the origin (every mean has the
same component ``||a||`` along ``a``), and the specific subspace is spanned by the differences
between the means. Everything here is plain numpy.
"""
from __future__ import annotations

import numpy as np


def decompose_block(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decompose one block's language means.

    Args:
        means: ``[K, d]`` mean representation of each language (K >= 2).

    Returns:
        ``(agnostic [d], specific [K - 1, d])`` in float64; ``specific`` has orthonormal rows.
    """
    M = np.asarray(means, dtype=np.float64).T  # [d, K]
    K = M.shape[1]
    r = K - 1
    mu = M.mean(axis=1, keepdims=True)
    U, S, Vt = np.linalg.svd(M - mu, full_matrices=False)
    Mr = mu + (U[:, :r] * S[:r]) @ Vt[:r]
    a = np.linalg.pinv(Mr).T @ np.ones(K)
    a = a / (a @ a)
    U2, _, _ = np.linalg.svd(Mr - a[:, None], full_matrices=False)
    return a, U2[:, :r].T.copy()


def decompose(means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`decompose_block` for every block: ``means [n_blocks, K, d]`` ->
    ``(agnostic [n_blocks, d], specific [n_blocks, K - 1, d])``, float64."""
    parts = [decompose_block(m) for m in np.asarray(means, dtype=np.float64)]
    return np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])


def projector(specific: np.ndarray) -> np.ndarray:
    """Orthogonal projector onto the specific subspace: ``B^T B`` (``[..., d, d]``) for a basis
    ``B [..., r, d]`` with orthonormal rows; basis-free, so two bases of one subspace give one projector."""
    B = np.asarray(specific, dtype=np.float64)
    return np.swapaxes(B, -1, -2) @ B
