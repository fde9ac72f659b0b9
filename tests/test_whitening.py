"""BERT-whitening: the fitted transform whitens, cuts dimensions by variance, saves and loads."""

import numpy as np
import pytest

from suji_models.tasks.whitening import Whitening


def correlated(n=2000, d=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d) * 5


def test_whitened_vectors_have_zero_mean_and_identity_covariance():
    x = correlated()
    y = Whitening.fit(x).apply(x).astype(np.float64)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(y.T @ y / len(y), np.eye(6), atol=1e-4)


def test_dimension_cut_keeps_the_largest_variance_directions():
    x = correlated()
    full, cut = Whitening.fit(x), Whitening.fit(x, dim=2)
    np.testing.assert_allclose(cut.apply(x), full.apply(x)[:, :2], atol=1e-5)
    # the kept directions are the top eigenvectors of the covariance (PCA), scaled to unit variance
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(x.T, bias=True))
    top = eigenvectors[:, ::-1][:, :2]
    np.testing.assert_allclose(np.abs(cut.kernel * np.sqrt(eigenvalues[::-1][:2])), np.abs(top), atol=1e-6)


def test_save_load_round_trip_and_errors(tmp_path):
    x = correlated()
    w = Whitening.fit(x, dim=3)
    path = w.save(tmp_path / "w.npz")
    assert path.name == "w.npz"
    np.testing.assert_array_equal(Whitening.load(path).apply(x), w.apply(x))
    with pytest.raises(ValueError, match="fitted on 6-d"):
        w.apply(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="dim must be"):
        Whitening.fit(x, dim=7)
    with pytest.raises(ValueError, match="N >= 2"):
        Whitening.fit(x[:1])
