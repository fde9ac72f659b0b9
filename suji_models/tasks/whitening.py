"""BERT-whitening ("你可能不需要BERT-flow：一个线性变换媲美BERT-flow", kexue.fm/archives/8069).

Cosine similarity assumes an orthonormal basis; raw sentence vectors are far from isotropic. Whitening
maps them to zero mean and identity covariance with one linear transform fitted on (unlabelled)
sentence vectors {x_i}:

    mu = mean_i x_i,   Sigma = (1/N) sum_i (x_i - mu)^T (x_i - mu) = U Lambda U^T   (SVD)
    W = U Lambda^{-1/2},   x~ = (x - mu) W

Keeping only the first k columns of W (the directions of largest variance) cuts the dimension,
which the post found often helps as well as speeding up retrieval.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


class Whitening:
    """`fit(vectors)` -> `apply(vectors)`; `save(path)` / `Whitening.load(path)` as one .npz."""

    def __init__(self, mean: np.ndarray, kernel: np.ndarray):
        if mean.ndim != 1 or kernel.ndim != 2 or kernel.shape[0] != mean.shape[0]:
            raise ValueError(f"whitening: mean {mean.shape} and kernel {kernel.shape} do not fit together")
        self.mean, self.kernel = mean.astype(np.float64), kernel.astype(np.float64)

    @property
    def dim(self) -> int:
        return self.kernel.shape[1]

    @classmethod
    def fit(cls, vectors, dim: int | None = None, epsilon: float = 1e-12) -> "Whitening":
        """Fit on [N, d] vectors; `dim` keeps the k largest-variance directions (None: all d).
        `epsilon` guards directions of zero variance (they would divide by zero)."""
        x = np.asarray(vectors, dtype=np.float64)
        if x.ndim != 2 or len(x) < 2:
            raise ValueError(f"whitening needs [N >= 2, d] vectors, got shape {x.shape}")
        if dim is not None and not 0 < dim <= x.shape[1]:
            raise ValueError(f"whitening dim must be in 1..{x.shape[1]}, got {dim}")
        mean = x.mean(axis=0)
        centred = x - mean
        covariance = centred.T @ centred / len(x)
        u, s, _ = np.linalg.svd(covariance)  # symmetric PSD: s descending, u its eigenvectors
        kernel = u / np.sqrt(np.maximum(s, epsilon))[None, :]
        return cls(mean, kernel[:, :dim] if dim else kernel)

    def apply(self, vectors) -> np.ndarray:
        x = np.asarray(vectors, dtype=np.float64)
        if x.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"whitening was fitted on {self.mean.shape[0]}-d vectors, got {x.shape[-1]}-d")
        return ((x - self.mean) @ self.kernel).astype(np.float32)

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as handle:  # an open handle: np.savez would otherwise append ".npz"
            np.savez(handle, mean=self.mean, kernel=self.kernel)
        return path

    @classmethod
    def load(cls, path) -> "Whitening":
        with np.load(Path(path)) as data:
            return cls(data["mean"], data["kernel"])
