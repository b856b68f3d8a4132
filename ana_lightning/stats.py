"""Numbers that hold on small data: metrics from label arrays, bootstrap intervals, fold summaries,
paired tests.

Everything here works on plain arrays of decided labels, so one code path serves a run's test split
(:func:`bootstrap_intervals`), pooled out-of-fold predictions and two methods' folds
(:func:`paired_comparison`, :func:`mcnemar`).

Metric definitions (the same as the logged ``test/*`` metrics):

- ``mca``: mean class accuracy = mean recall over the classes present in the evaluated ground truth
  (a class without true images is left out, not counted as 0).
- ``acc`` (single-label) / ``exact_match`` (multi-label): fraction of images whose label set is right.
- ``micro_f1``: ``2 TP / (2 TP + FP + FN)`` over all (image, class) pairs.
- ``macro_f1``: mean F1 over the classes present in the ground truth.
- ``hamming_loss``: fraction of wrong (image, class) decisions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "label_matrix",
    "point_metrics",
    "bootstrap_intervals",
    "t_interval",
    "fold_summary",
    "paired_comparison",
    "mcnemar",
    "sign_test",
    "majority_vote",
    "SINGLE_LABEL_KEYS",
    "MULTI_LABEL_KEYS",
    "CI_KEYS",
]

SINGLE_LABEL_KEYS = ("mca", "acc", "macro_f1")
MULTI_LABEL_KEYS = ("mca", "exact_match", "micro_f1", "macro_f1", "hamming_loss")
#: The headline metrics that get a bootstrap interval in every run's ``metrics.json``.
CI_KEYS = ("mca", "acc", "exact_match", "micro_f1")


def label_matrix(labels: Sequence[str | Sequence[str]], classes: Sequence[str]) -> np.ndarray:
    """``(N, K)`` boolean matrix from per-image labels (a class name, a ``;``-joined list, or a sequence).

    >>> label_matrix(["AC-1", "AC-1;AC-4", ""], ["AC-1", "AC-4"]).astype(int).tolist()
    [[1, 0], [1, 1], [0, 0]]
    """
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(labels), len(classes)), dtype=bool)
    for n, lab in enumerate(labels):
        names = [c for c in lab.split(";") if c] if isinstance(lab, str) else list(lab)
        for c in names:
            if c not in index:
                raise ValueError(f"label {c!r} is not one of the classes {list(classes)}")
            out[n, index[c]] = True
    return out


def _weighted(
    true: np.ndarray, pred: np.ndarray, w: np.ndarray, keys: Sequence[str]
) -> dict[str, np.ndarray]:
    """Metrics for every row of the image weights ``w`` ``(B, N)`` (one row = one resample)."""
    t, p = true.astype(np.float64), pred.astype(np.float64)
    tp, fp, fn = t * p, (1 - t) * p, t * (1 - p)
    n = w.sum(1)
    out: dict[str, np.ndarray] = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        if {"acc", "exact_match"} & set(keys):
            exact = (true == pred).all(1).astype(np.float64)
            for k in ("acc", "exact_match"):
                if k in keys:
                    out[k] = w @ exact / n
        if {"mca", "macro_f1"} & set(keys):
            s_tp, s_pos = w @ tp, w @ t  # (B, K)
            present = s_pos > 0
            if "mca" in keys:
                out["mca"] = np.where(present, s_tp / np.where(present, s_pos, 1), 0).sum(1) / present.sum(1)
            if "macro_f1" in keys:
                s_fp, s_fn = w @ fp, w @ fn
                den = 2 * s_tp + s_fp + s_fn
                f1 = np.where(den > 0, 2 * s_tp / np.where(den > 0, den, 1), 0)
                out["macro_f1"] = np.where(present, f1, 0).sum(1) / present.sum(1)
        if "micro_f1" in keys:
            a, b, c = w @ tp.sum(1), w @ fp.sum(1), w @ fn.sum(1)
            out["micro_f1"] = 2 * a / (2 * a + b + c)
        if "hamming_loss" in keys:
            out["hamming_loss"] = w @ (true != pred).mean(1) / n
    return out


def point_metrics(true: np.ndarray, pred: np.ndarray, keys: Sequence[str] | None = None) -> dict[str, float]:
    """The metrics of decided labels ``pred`` against ``true`` (both ``(N, K)`` boolean; one-hot
    rows for single-label data). ``keys`` default: single- or multi-label keys by the data.

    >>> t = label_matrix(["a", "a", "b"], ["a", "b"]); p = label_matrix(["a", "b", "b"], ["a", "b"])
    >>> {k: round(v, 3) for k, v in point_metrics(t, p).items()}
    {'mca': 0.75, 'acc': 0.667, 'macro_f1': 0.667}
    """
    true, pred = np.asarray(true, bool), np.asarray(pred, bool)
    if keys is None:
        multi = bool((true.sum(1) != 1).any() or (pred.sum(1) != 1).any())
        keys = MULTI_LABEL_KEYS if multi else SINGLE_LABEL_KEYS
    if len(true) == 0:
        return {k: math.nan for k in keys}
    got = _weighted(true, pred, np.ones((1, len(true))), keys)
    return {k: float(got[k][0]) for k in keys}


def bootstrap_intervals(
    true: np.ndarray,
    pred: np.ndarray,
    keys: Sequence[str],
    clusters: Sequence[str] | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of each metric in ``keys``.

    ``clusters`` (one id per image: its group — patient, specimen, field — or anything that must be
    resampled together) makes it a cluster bootstrap: whole clusters are drawn with replacement, as
    the split itself keeps them together. ``None``: images are drawn one by one.
    """
    true, pred = np.asarray(true, bool), np.asarray(pred, bool)
    n = len(true)
    if n == 0:
        return {k: (math.nan, math.nan) for k in keys}
    ids = (
        np.arange(n)
        if clusters is None
        else np.unique(np.asarray(clusters, dtype=object).astype(str), return_inverse=True)[1]
    )
    g = int(ids.max()) + 1
    rng = np.random.default_rng(seed)
    values: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    chunk = max(1, min(n_boot, 4_000_000 // max(n, 1)))
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        draws = rng.integers(0, g, size=(b, g))
        counts = np.zeros((b, g))
        np.add.at(counts, (np.repeat(np.arange(b), g), draws.ravel()), 1)
        for k, v in _weighted(true, pred, counts[:, ids], keys).items():
            values[k].append(v)
        done += b
    alpha = (1 - level) / 2
    out = {}
    for k in keys:
        v = np.concatenate(values[k])
        v = v[np.isfinite(v)]
        out[k] = (
            (float(np.quantile(v, alpha)), float(np.quantile(v, 1 - alpha)))
            if len(v)
            else (math.nan, math.nan)
        )
    return out


def t_interval(
    values: Sequence[float], level: float = 0.95, variance_factor: float | None = None
) -> tuple[float, float]:
    """Student-t interval of the mean of ``values``. ``variance_factor`` replaces ``1/n`` in the
    variance of the mean (the Nadeau–Bengio correction ``1/n + n_test/n_train`` for repeated k-fold)."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if len(v) < 2:
        return math.nan, math.nan
    sd = float(v.std(ddof=1))
    factor = variance_factor if variance_factor is not None else 1.0 / len(v)
    half = float(stats.t.ppf(0.5 + level / 2, len(v) - 1)) * sd * math.sqrt(factor)
    return float(v.mean()) - half, float(v.mean()) + half


def fold_summary(
    per_fold: Mapping[str, Sequence[float | None]], folds: int, repeats: int = 1
) -> dict[str, float | int]:
    """``M/mean``, ``M/sd`` (sample SD over folds), ``M/ci95_low``, ``M/ci95_high``, ``M/n_folds`` of
    every metric ``M``. One k-fold: t-interval over the k folds. Repeated k-fold: the corrected
    resampled t-interval (Nadeau & Bengio, 2003; variance factor ``1/n + 1/(k-1)``), since the
    folds of different repeats share images and plain t would be too narrow."""
    out: dict[str, float | int] = {}
    for m, vals in sorted(per_fold.items()):
        v = np.asarray([x for x in vals if x is not None and np.isfinite(x)], dtype=float)
        factor = 1.0 / len(v) + 1.0 / (folds - 1) if repeats > 1 and len(v) else None
        lo, hi = t_interval(v, variance_factor=factor)
        out[f"{m}/mean"] = float(v.mean()) if len(v) else math.nan
        out[f"{m}/sd"] = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        out[f"{m}/ci95_low"], out[f"{m}/ci95_high"] = lo, hi
        out[f"{m}/n_folds"] = int(len(v))
    return out


def paired_comparison(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, variance_factor: float | None = None
) -> dict[str, float | int]:
    """Paired differences ``a - b`` (one per fold): mean, SD, t-interval, paired t-test and Wilcoxon
    signed-rank p-values. Identical inputs give difference 0, interval [0, 0] and p = 1.

    >>> paired_comparison([0.8, 0.7, 0.9], [0.8, 0.7, 0.9])["p_ttest"]
    1.0
    """
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired values differ in number: {len(a)} vs {len(b)}")
    d = a - b
    n = len(d)
    out: dict[str, float | int] = {
        "n": n,
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_diff": float(d.mean()),
        "sd_diff": float(d.std(ddof=1)) if n > 1 else math.nan,
    }
    if n > 1 and np.allclose(d, 0):
        out.update(ci95_low=0.0, ci95_high=0.0, t=0.0, p_ttest=1.0, p_wilcoxon=1.0)
        return out
    lo, hi = t_interval(d, level, variance_factor)
    out["ci95_low"], out["ci95_high"] = lo, hi
    if n > 1:
        se = float(d.std(ddof=1)) * math.sqrt(variance_factor if variance_factor is not None else 1.0 / n)
        t = float(d.mean()) / se if se > 0 else math.copysign(math.inf, float(d.mean()))
        out["t"] = t
        out["p_ttest"] = float(2 * stats.t.sf(abs(t), n - 1))
        try:
            out["p_wilcoxon"] = float(stats.wilcoxon(d, zero_method="zsplit").pvalue)
        except ValueError:
            out["p_wilcoxon"] = math.nan
    else:
        out.update(t=math.nan, p_ttest=math.nan, p_wilcoxon=math.nan)
    return out


def majority_vote(votes: Mapping[str, int]) -> str | None:
    """The label with strictly the most votes; None on a tie (no verdict) or no votes.

    >>> majority_vote({"AC-1": 3, "AC-4": 1}), majority_vote({"AC-1": 2, "AC-4": 2})
    ('AC-1', None)
    """
    ranked = sorted(((n, k) for k, n in votes.items() if n > 0), reverse=True)
    if not ranked or (len(ranked) > 1 and ranked[0][0] == ranked[1][0]):
        return None
    return ranked[0][1]


def sign_test(a_wins: int, b_wins: int) -> float:
    """Two-sided exact sign test: the binomial p-value of ``a_wins`` among ``a_wins + b_wins`` at 1/2 (ties
    left out by the caller; 1 when there is nothing to count)."""
    from scipy import stats

    if a_wins < 0 or b_wins < 0:
        raise ValueError(f"sign_test counts wins: got {a_wins} and {b_wins}")
    n = a_wins + b_wins
    return 1.0 if n == 0 else float(stats.binomtest(a_wins, n, 0.5).pvalue)


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, float | int]:
    """Exact McNemar test on paired per-image correctness: ``b`` = images A gets right and B wrong,
    ``c`` = the reverse; two-sided binomial p-value of ``b`` among ``b + c`` (1 when ``b + c = 0``)."""
    from scipy import stats

    ca, cb = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    if ca.shape != cb.shape:
        raise ValueError(f"McNemar needs the same images: {len(ca)} vs {len(cb)}")
    b, c = int((ca & ~cb).sum()), int((~ca & cb).sum())
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"n_images": int(len(ca)), "a_only_correct": b, "b_only_correct": c, "p_mcnemar": p}


def run_intervals(
    model,
    records: Sequence,
    metrics: Mapping[str, float],
    stage: str = "test",
    n_boot: int = 1000,
    seed: int = 0,
    together: Sequence[Sequence[str]] = (),
) -> dict[str, float]:
    """``{stage}/<M>_ci95_low`` / ``_ci95_high`` for the headline metrics (:data:`CI_KEYS`) that
    ``metrics`` holds, from the model's last test predictions (``model.test_predictions``: ``index``
    into ``records``, ``prob``, ``target`` and, for multi-label models, ``pred``). Resampled by group
    (else by near-duplicate set in ``together``, else by byte-identical file), as the split keeps
    those together.
    Empty when the model keeps no per-image predictions."""
    preds = getattr(model, "test_predictions", None) or {}
    if "index" not in preds or "prob" not in preds or "target" not in preds or not len(preds["index"]):
        return {}
    keys = [k for k in CI_KEYS if f"{stage}/{k}" in metrics]
    if not keys:
        return {}
    prob = preds["prob"].detach().cpu().float().numpy()
    target = preds["target"].detach().cpu().numpy()
    k = prob.shape[1]
    if "pred" in preds:  # multi-label: decided by the model's rule
        pred = preds["pred"].detach().cpu().numpy().astype(bool)
        true = (target > 0.5) if target.ndim == 2 else np.eye(k, dtype=bool)[target.astype(int)]
    else:
        true = np.eye(k, dtype=bool)[target.astype(int)]
        pred = np.eye(k, dtype=bool)[prob.argmax(1)]
    recs = [records[int(i)] for i in preds["index"]]
    near = {
        p: f"near:{min(paths)}" for paths in together for p in paths
    }  # near-duplicate sets (data/splits.py)
    clusters = [r.group or near.get(r.path) or r.sha256 or r.path for r in recs]
    ci = bootstrap_intervals(true, pred, keys, clusters=clusters, n_boot=n_boot, seed=seed)
    out = {}
    for m, (lo, hi) in ci.items():
        out[f"{stage}/{m}_ci95_low"], out[f"{stage}/{m}_ci95_high"] = lo, hi
    return out
