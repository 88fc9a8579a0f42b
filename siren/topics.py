"""Stage 1's topics: K-means over the item embeddings, nearest-centre assignment, exemplars.

faiss when it is importable, else scikit-learn; both run on one thread and give the same
assignment for the same seed (see `kmeans`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from siren import SirenError

if TYPE_CHECKING:
    from siren.items import ItemTable

KMEANS_BACKENDS = ("auto", "faiss", "sklearn")


@dataclass
class KMeansResult:
    assignment: np.ndarray  # int64 [N]
    distance: np.ndarray  # float32 [N], Euclidean distance to the assigned centre
    centroids: np.ndarray  # float32 [K, D]
    backend: str


def resolve_kmeans_backend(backend: str) -> str:
    if backend not in KMEANS_BACKENDS:
        raise SirenError(f"unknown --kmeans_backend {backend!r}; expected one of {', '.join(KMEANS_BACKENDS)}")
    if backend == "sklearn":
        return backend
    try:
        import faiss  # noqa: F401
    except ImportError:
        if backend == "faiss":
            raise SirenError("--kmeans_backend faiss needs the faiss-cpu package (pip install faiss-cpu)") from None
        return "sklearn"
    return "faiss"


def nearest_centres(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assignment to the nearest centre and the distance to it, as one [N, K] matrix product.

    float64 so the same vectors and centres always give the same argmin, whichever BLAS ran.
    """
    x = vectors.astype(np.float64)
    c = centroids.astype(np.float64)
    squared = (x * x).sum(1)[:, None] - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    assignment = squared.argmin(1)
    distance = np.sqrt(np.maximum(squared[np.arange(len(x)), assignment], 0.0))
    return assignment.astype(np.int64), distance.astype(np.float32)


def kmeans(vectors: np.ndarray, k: int, *, backend: str = "auto", niter: int = 100, nredo: int = 5, seed: int = 0) -> KMeansResult:
    """K-means over the rows of `vectors`; the same seed and backend give the same result."""
    n = len(vectors)
    if k < 1:
        raise SirenError(f"the number of clusters must be >= 1, got {k}")
    if k > n:
        raise SirenError(f"--n_clusters {k} is larger than the number of items ({n})")
    backend = resolve_kmeans_backend(backend)
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    # One thread: an iteration is ~N*K*D = 10^8 flops, so OpenMP synchronisation costs more than it
    # saves (on a shared 2-core machine two threads were 14x slower), and the result cannot depend
    # on the thread count.
    if backend == "faiss":
        import faiss

        threads_before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            # faiss subsamples to 256 points per centre by default; use every item instead.
            model = faiss.Kmeans(
                x.shape[1], k, niter=niter, nredo=nredo, seed=seed, verbose=False,
                max_points_per_centroid=max(1, math.ceil(n / k)) + 1, min_points_per_centroid=1,
            )
            model.train(x)
        finally:
            faiss.omp_set_num_threads(threads_before)
        centroids = np.asarray(model.centroids, dtype=np.float32)
    else:
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            model = KMeans(n_clusters=k, n_init=nredo, max_iter=niter, random_state=seed, algorithm="lloyd")
            model.fit(x)
        centroids = model.cluster_centers_.astype(np.float32)
    assignment, distance = nearest_centres(x, centroids)
    return KMeansResult(assignment=assignment, distance=distance, centroids=centroids, backend=backend)


def cluster_exemplars(result: KMeansResult, items: ItemTable, top_k: int) -> dict[int, list[dict]]:
    """The `top_k` items nearest each centre, nearest first; one entry per distinct text."""
    exemplars: dict[int, list[dict]] = {}
    for cluster in range(len(result.centroids)):
        members = np.flatnonzero(result.assignment == cluster)
        members = members[np.argsort(result.distance[members], kind="stable")]
        chosen, seen = [], set()
        for i in members:
            if items.texts[i] in seen:
                continue
            seen.add(items.texts[i])
            chosen.append({"item_id": items.item_ids[i], "text": items.texts[i], "distance": round(float(result.distance[i]), 6)})
            if len(chosen) == top_k:
                break
        exemplars[cluster] = chosen
    return exemplars
