"""Combine many probability vectors (tiles or cells of a field; fields of a specimen) into one.

- ``mean_log``: the normalised geometric mean, ``softmax(mean(log p))`` — each unit's evidence adds;
- ``vote``: the share of units whose top class is each class (majority vote, ties to the lower index);
- ``mean``: the arithmetic mean of the probabilities.

>>> import numpy as np
>>> combine_probs(np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]), "vote").round(3).tolist()
[0.667, 0.333]
"""

from __future__ import annotations

import numpy as np

__all__ = ["METHODS", "combine_probs", "INSUFFICIENT"]

METHODS = ("mean_log", "vote", "mean")
#: The verdict of a field (or specimen) with fewer usable units than the minimum.
INSUFFICIENT = "insufficient cells"


def combine_probs(probs: np.ndarray, method: str = "mean_log", eps: float = 1e-6) -> np.ndarray:
    """``(N, K)`` → ``(K,)`` by ``method`` (see the module docstring). ``N`` must be at least 1."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"combine_probs needs an (N>=1, K) array, got shape {p.shape}")
    if method == "mean_log":
        z = np.log(np.clip(p, eps, 1.0)).mean(axis=0)
        z = np.exp(z - z.max())
        return z / z.sum()
    if method == "vote":
        votes = np.bincount(p.argmax(axis=1), minlength=p.shape[1]).astype(np.float64)
        return votes / votes.sum()
    if method == "mean":
        return p.mean(axis=0)
    raise ValueError(f"combine={method!r} is not one of {METHODS}")
