"""UMAP embeddings of one layer's activations: 30-d for scores, 2-d for pictures.

UMAP's output depends on row order, so rows are shuffled with a fixed seed before fitting and restored after;
the neighbour graph is computed once per layer and shared by the 30-d and 2-d fits.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from kmap.settings import known_keys


@dataclass(frozen=True)
class UmapParams:
    n_neighbors: int = 15
    min_dist: float = 0.1
    n_components: int = 30
    n_epochs: int = 200  # umap-learn's default for < 10,000 points is 500; 200 is stable on prompt sets
    seed: int = 0
    k_anisotropy: int = 20
    cv_folds: int = 5
    ridge_alpha: float = 1.0
    collapse_threshold: float = 0.5
    panel_layers: int = 6

    @classmethod
    def from_dict(cls, overrides: dict[str, Any] | None) -> UmapParams:
        return cls(**known_keys(cls, overrides, "umap", "parameter"))


def embed(points: np.ndarray, params: UmapParams, dims: tuple[int, ...] = (30, 2)) -> dict[int, np.ndarray]:
    """Embeddings of ``points`` in each of ``dims`` dimensions, rows in the input order."""
    import umap
    from umap.umap_ import nearest_neighbors

    n = len(points)
    order = np.random.default_rng(params.seed).permutation(n)
    shuffled = np.ascontiguousarray(points[order], dtype=np.float32)
    neighbours = min(params.n_neighbors, n - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state" and friends
        knn_index, knn_dist, _ = nearest_neighbors(
            shuffled, neighbours, "euclidean", {}, False, np.random.RandomState(params.seed), verbose=False
        )
        out = {}
        for dim in dims:
            # Spectral initialisation needs more points than dimensions; fall back to random init.
            init = "spectral" if n > dim + 2 else "random"
            reducer = umap.UMAP(
                n_components=min(dim, n - 2),
                n_neighbors=neighbours,
                min_dist=params.min_dist,
                n_epochs=params.n_epochs,
                random_state=params.seed,
                init=init,
                precomputed_knn=(knn_index, knn_dist, None),
            )
            fitted = reducer.fit_transform(shuffled)
            restored = np.empty_like(fitted)
            restored[order] = fitted
            out[dim] = restored
    return out


def _embed_one(args: tuple[np.ndarray, UmapParams, tuple[int, ...]]) -> dict[int, np.ndarray]:
    points, params, dims = args
    return embed(points, params, dims)


def embed_layers(
    acts: np.ndarray, params: UmapParams, dims: tuple[int, ...], workers: int = 1
) -> list[dict[int, np.ndarray]]:
    """``embed`` for every layer of ``acts`` [n_layers, n, d], in ``workers`` processes.

    Processes, not threads: UMAP's numba kernels hold the GIL. Each worker loads umap's compiled kernels from
    numba's on-disk cache, so the pool pays the JIT cost once per machine, not once per layer. Results do not
    depend on ``workers`` (each layer's fit is seeded on its own)."""
    jobs = [(layer, params, dims) for layer in acts]
    if workers <= 1 or len(jobs) < 3:
        return [_embed_one(job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a forked torch/numba runtime is not fork-safe.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_embed_one, jobs))
