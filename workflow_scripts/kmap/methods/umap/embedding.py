"""UMAP embeddings of one layer's activations: 30-d for scores, 2-d for pictures.

UMAP's output depends on row order, so rows are shuffled with a fixed seed before fitting and restored after;
the neighbour graph is computed once per layer and shared by the 30-d and 2-d fits. Below umap-learn's own
small-data threshold (4,096 points) the neighbours are exact, as umap-learn computes them when it builds the graph
itself; above it, NN-descent as umap-learn uses.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from kmap.core.settings import known_keys, schema_field

# umap-learn switches from exact neighbours to NN-descent at this many points; so do we.
EXACT_KNN_BELOW = 4096


@dataclass(frozen=True)
class UmapParams:
    n_neighbors: int = schema_field("umap", "n_neighbors")
    min_dist: float = schema_field("umap", "min_dist")
    n_components: int = schema_field("umap", "n_components")
    n_epochs: int = schema_field(
        "umap", "n_epochs"
    )  # umap-learn's default for < 10,000 points is 500; 200 is stable on prompt sets
    seed: int = schema_field("umap", "seed")
    k_anisotropy: int = schema_field("umap", "k_anisotropy")
    cv_folds: int = schema_field("umap", "cv_folds")
    ridge_alpha: float = schema_field("umap", "ridge_alpha")
    collapse_threshold: float = schema_field("umap", "collapse_threshold")
    panel_layers: int = schema_field("umap", "panel_layers")

    @classmethod
    def from_dict(cls, overrides: dict[str, Any] | None) -> UmapParams:
        return cls(**known_keys(cls, overrides, "umap", "parameter"))


def exact_neighbours(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest rows of each row (itself first), Euclidean, as umap-learn's small-data path finds them:
    a full distance matrix, each row sorted stably (ties keep row order)."""
    from scipy.spatial.distance import cdist

    distances = cdist(points, points)  # float64
    index = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return index.astype(np.int32), np.take_along_axis(distances, index, axis=1).astype(np.float32)


_kernels_cached = False


def _cache_kernels() -> None:
    """Let numba keep umap-learn's layout kernels on disk: umap-learn compiles them without ``cache=True``, which
    costs every new process about a minute of JIT before its first layout. Speed only; results do not change."""
    global _kernels_cached
    if _kernels_cached:
        return
    _kernels_cached = True
    import sys

    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    for name, module in list(sys.modules.items()):
        if name == "umap" or name.startswith("umap."):
            for kernel in list(vars(module).values()):
                if isinstance(kernel, CPUDispatcher) and isinstance(kernel._cache, NullCache):
                    # A kernel numba cannot cache is compiled as before.
                    with contextlib.suppress(Exception):
                        kernel.enable_caching()


def embed(points: np.ndarray, params: UmapParams, dims: tuple[int, ...] = (30, 2)) -> dict[int, np.ndarray]:
    """Embeddings of ``points`` in each of ``dims`` dimensions, rows in the input order."""
    import umap
    from umap.umap_ import nearest_neighbors

    _cache_kernels()
    n = len(points)
    order = np.random.default_rng(params.seed).permutation(n)
    shuffled = np.ascontiguousarray(points[order], dtype=np.float32)
    neighbours = min(params.n_neighbors, n - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by setting random_state" and friends
        if n < EXACT_KNN_BELOW:
            knn_index, knn_dist = exact_neighbours(shuffled, neighbours)
        else:
            knn_index, knn_dist, _ = nearest_neighbors(
                shuffled, neighbours, "euclidean", {}, False, np.random.RandomState(params.seed), verbose=False
            )
        # Spectral initialisation needs more points than dimensions. On repeated rows (a layer where prompts share
        # their pooled token, such as the embeddings) the graph's Laplacian has repeated eigenvalues and ARPACK
        # returns a different eigenbasis on each call, so the layout would change from run to run: seeded random
        # initialisation there instead (the layout of identical points carries no information either way).
        repeated = len(np.unique(shuffled, axis=0)) < n
        out = {}
        for dim in dims:
            init = "spectral" if n > dim + 2 and not repeated else "random"
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
