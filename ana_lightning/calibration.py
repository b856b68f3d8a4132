"""Temperature scaling: calibrated confidence for every model a run writes.

After training, :func:`calibrate_run` fits a temperature ``T`` on the **validation** split (never on
test) by minimising the negative log-likelihood of ``logits / T`` (Guo et al., 2017). Dividing logits
by one positive number never changes their order, so the predicted class (argmax) is unchanged;
multi-label decision thresholds are moved with the temperature (``σ(logit(t) / T)``), so the labels a
model predicts are unchanged too. Only the probabilities move, towards the observed frequencies.

- single-label softmax and Siamese models: one temperature (Siamese: on the log of the normalised
  support-set scores). When the validation images come in groups (specimens, slides, patients), the
  temperature must also **carry across groups**: fitted on the other groups, it has to lower each
  group's NLL overall (cross-validation over the groups, :func:`carries_across_groups`). Otherwise the
  model stays uncalibrated (``T = 1``) and the run says so (on the real I3A cells a temperature fitted
  on the other validation specimens often raised a specimen's NLL: ``experiments/i3a_cells/README.md``);
- multi-label sigmoid ensembles: one temperature, or one per class when that gives a lower held-out
  NLL in a two-fold split of the validation set (:func:`choose_scope`, measured in every run and logged);
- multi-head hierarchical models: one temperature per level.

The temperature is stored in the checkpoint (``hyper_parameters.temperature`` and
``ana_lightning.temperature``) and applied by the model's ``predict_proba``, which every prediction
path uses (``ana-predict``, ``ana-export``, ``ana-app``, ``ana-eval``). ``calibrate=false`` turns it off.
The test split gains ``test/ece`` and ``test/ece_uncalibrated`` (torchmetrics' ``CalibrationError``,
15 equal-width bins, L1) and ``test_reliability_diagram.png``.

>>> z = torch.tensor([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]]); y = torch.tensor([0, 1, 1, 0])
>>> t = fit_temperature(z, y)
>>> bool(t.item() > 1)  # over-confident logits are softened
True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

__all__ = [
    "N_BINS",
    "TemperatureMixin",
    "fit_temperature",
    "choose_scope",
    "carries_across_groups",
    "expected_calibration_error",
    "plot_reliability_diagram",
    "collect_logits",
    "calibrate_run",
    "calibration_metrics",
    "store_temperature",
]

log = logging.getLogger(__name__)

N_BINS = 15
T_MIN, T_MAX = 0.05, 20.0


# ---------------------------------------------------------------------------------------------- model side
class TemperatureMixin:
    """What a LightningModule needs to carry a temperature: a buffer, and saving/restoring it.

    The model defines ``calibration_kind`` (``multiclass`` | ``multilabel`` | ``hierarchical``),
    ``calibration_logits(x)`` (what the temperature divides: a tensor, or one per level) and applies
    :meth:`scaled` in ``predict_proba``. Call :meth:`_init_temperature` in ``__init__``.
    """

    calibration_kind = "multiclass"

    def _init_temperature(self, n: int = 1) -> None:
        # Not in the state dict: checkpoints written before calibration existed still load strictly.
        self._temperature_size = n
        self.register_buffer("temperature", torch.ones(n), persistent=False)
        self.hparams["temperature"] = None

    def scaled(self, logits: torch.Tensor, level: int | None = None) -> torch.Tensor:
        t = self.temperature if level is None else self.temperature[level]
        return logits / t.to(logits.dtype)

    def set_temperature(self, temperature: Sequence[float] | float | torch.Tensor | None) -> None:
        """Store ``temperature`` (``None``: 1, i.e. uncalibrated) in the model and its hparams."""
        t = (
            torch.ones(self._temperature_size)
            if temperature is None
            else torch.as_tensor(temperature, dtype=torch.float32).flatten()
        )
        if not torch.isfinite(t).all() or (t <= 0).any():
            raise ValueError(f"temperature must be positive and finite, got {t.tolist()}")
        if len(t) == 1 and self._temperature_size > 1:
            t = t.repeat(self._temperature_size)
        if len(t) != self._temperature_size and self.calibration_kind != "multilabel":
            raise ValueError(
                f"{len(t)} temperatures for a model with {self._temperature_size} output level(s)"
            )
        self.temperature = t.to(self.temperature.device)
        self.hparams["temperature"] = None if temperature is None else [round(float(v), 6) for v in t]

    @property
    def is_calibrated(self) -> bool:
        return self.hparams.get("temperature") is not None

    def on_fit_start(self) -> None:
        self.set_temperature(
            None
        )  # training and threshold tuning see the raw outputs; calibration comes after

    def _save_temperature(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault("ana_lightning", {})["temperature"] = self.hparams.get("temperature")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        t = (checkpoint.get("ana_lightning") or {}).get("temperature")
        if t is None:
            t = (checkpoint.get("hyper_parameters") or {}).get("temperature")
        self.set_temperature(t)


def store_temperature(
    path: str | Path,
    temperature: Sequence[float] | None,
    extra: Mapping[str, Any] | None = None,
    state: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write ``temperature`` (and ``extra`` metadata and ``state`` dict entries, e.g. moved thresholds) into a
    checkpoint file, atomically (a temporary file renamed over it)."""
    from .utils import safe_torch_load

    path = Path(path)
    ckpt = safe_torch_load(path)  # the run's own file: tensors and plain values
    t = None if temperature is None else [round(float(v), 6) for v in temperature]
    ckpt.setdefault("hyper_parameters", {})["temperature"] = t
    meta = ckpt.setdefault("ana_lightning", {})
    meta["temperature"] = t
    meta.update(dict(extra or {}))
    for k, v in (state or {}).items():
        if k in ckpt.get("state_dict", {}):
            ckpt["state_dict"][k] = v.detach().cpu().to(ckpt["state_dict"][k].dtype)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- fitting
def _nll(logits: torch.Tensor, target: torch.Tensor, multilabel: bool) -> torch.Tensor:
    if multilabel:
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))
    return F.cross_entropy(logits, target, ignore_index=-1)


def fit_temperature(
    logits: torch.Tensor,
    target: torch.Tensor,
    multilabel: bool = False,
    per_class: bool = False,
    max_iter: int = 100,
) -> torch.Tensor:
    """The temperature(s) minimising the NLL of ``logits / T`` on ``(logits, target)`` — call it with
    validation outputs only. ``target``: class indices (``-1`` ignored), or multi-hot for ``multilabel``.
    Returns ``(1,)`` or, with ``per_class``, ``(K,)``; clamped to [0.05, 20]."""
    z = logits.detach().double().cpu()
    y = target.detach().cpu()
    if not multilabel:
        y = y.long()
        if not (y >= 0).any():
            return torch.ones(1)
    n = z.shape[-1] if per_class else 1
    log_t = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _nll(z / log_t.exp(), y, multilabel)
        loss.backward()
        return loss

    opt.step(closure)
    t = log_t.detach().exp().clamp(T_MIN, T_MAX).float()
    return t if torch.isfinite(t).all() else torch.ones(n)


def choose_scope(logits: torch.Tensor, target: torch.Tensor, seed: int = 0) -> tuple[str, dict[str, float]]:
    """Multi-label: ``per_class`` or ``global`` temperature, whichever has the lower held-out NLL in a
    two-fold split of the validation outputs (each half fits, the other half scores). Returns the choice
    and both held-out NLLs."""
    n = len(logits)
    if n < 4:
        return "global", {}
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    halves = (perm[: n // 2], perm[n // 2 :])
    scores = {}
    for scope in ("global", "per_class"):
        total = 0.0
        for fit_idx, score_idx in (halves, halves[::-1]):
            t = fit_temperature(
                logits[fit_idx], target[fit_idx], multilabel=True, per_class=scope == "per_class"
            )
            total += float(_nll(logits[score_idx].double() / t.double(), target[score_idx], True)) * len(
                score_idx
            )
        scores[scope] = total / n
    return ("per_class" if scores["per_class"] < scores["global"] else "global"), scores


def carries_across_groups(
    logits: torch.Tensor, target: torch.Tensor, groups: Sequence[Any], folds: int = 10, seed: int = 0
) -> dict[str, float] | None:
    """Does one temperature fitted on some validation groups help the others? Cross-validation over the
    groups: each group (with more than ``folds`` groups, each of ``folds`` sets of groups dealt after a
    seeded shuffle) is scored at the temperature fitted on all the others. Returns the held-out mean NLL
    ``fitted`` and ``uncalibrated`` (at ``T = 1``) over all grouped images, or None with fewer than two
    groups (images without a group are left out).

    >>> z = torch.tensor([[3.0, 0.0]] * 4 + [[0.0, 3.0]] * 4)
    >>> y = torch.tensor([0, 0, 0, 1, 1, 1, 1, 0])
    >>> r = carries_across_groups(z, y, ["a", "a", "b", "b", "c", "c", "d", "d"])
    >>> r["fitted"] < r["uncalibrated"]  # the same over-confidence everywhere: it carries
    True
    """
    names = sorted({str(g) for g in groups if g not in (None, "")})
    if len(names) < 2:
        return None
    k = min(int(folds), len(names))
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    fold_of = {names[i]: n % k for n, i in enumerate(order)}
    fold = torch.tensor([fold_of.get(str(g), -1) if g not in (None, "") else -1 for g in groups])
    z, y = logits.detach().double().cpu(), target.detach().cpu().long()
    fitted = uncalibrated = 0.0
    for f in range(k):
        fit_idx, score_idx = (fold >= 0) & (fold != f), fold == f
        t = fit_temperature(z[fit_idx], y[fit_idx]).double()
        fitted += float(F.cross_entropy(z[score_idx] / t, y[score_idx], ignore_index=-1, reduction="sum"))
        uncalibrated += float(F.cross_entropy(z[score_idx], y[score_idx], ignore_index=-1, reduction="sum"))
    n = max(1, int((y[fold >= 0] >= 0).sum()))
    return {"fitted": fitted / n, "uncalibrated": uncalibrated / n}


# ---------------------------------------------------------------------------------------------- metrics
def expected_calibration_error(
    probs: torch.Tensor, target: torch.Tensor, multilabel: bool = False, n_bins: int = N_BINS
) -> float:
    """ECE (torchmetrics ``CalibrationError``, L1): top-label for single-label, every (image, class)
    probability as a binary prediction for multi-label. Targets ``-1`` are left out."""
    from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

    p = probs.detach().float().cpu()
    y = target.detach().cpu()
    if multilabel:
        return float(binary_calibration_error(p.flatten(), y.flatten().long(), n_bins=n_bins, norm="l1"))
    keep = y >= 0
    if not keep.any():
        return float("nan")
    p = p[keep].clamp(0, 1)
    return float(
        multiclass_calibration_error(p, y[keep].long(), num_classes=p.shape[-1], n_bins=n_bins, norm="l1")
    )


def _reliability(probs: torch.Tensor, target: torch.Tensor, multilabel: bool, n_bins: int):
    p = probs.detach().float().cpu()
    y = target.detach().cpu()
    if multilabel:
        conf, hit = p.flatten().numpy(), (y.flatten() > 0.5).float().numpy()
    else:
        keep = y >= 0
        p, y = p[keep], y[keep].long()
        c, pred = p.max(-1)
        conf, hit = c.numpy(), (pred == y).float().numpy()
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    acc = np.bincount(idx, weights=hit, minlength=n_bins) / np.maximum(count, 1)
    mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / np.maximum(count, 1)
    return edges, count, acc, mean_conf


def plot_reliability_diagram(
    curves: Mapping[str, tuple[torch.Tensor, float]],
    target: torch.Tensor,
    path: str | Path,
    multilabel: bool = False,
    title: str = "",
    n_bins: int = N_BINS,
) -> Path:
    """One panel per entry of ``curves`` (``label → (probabilities, ECE)``): observed accuracy (multi-label:
    frequency of the positive label) per confidence bin against the diagonal, bin counts below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2,
        len(curves),
        figsize=(4.2 * len(curves), 5.6),
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1]},
        sharex=True,
    )
    for j, (label, (probs, ece)) in enumerate(curves.items()):
        edges, count, acc, mean_conf = _reliability(probs, target, multilabel, n_bins)
        centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        ax = axes[0, j]
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
        has = count > 0
        ax.bar(centres[has], acc[has], width=width * 0.95, color="#1f77b4", alpha=0.8, label="observed")
        ax.plot(mean_conf[has], acc[has], "o", color="#d62728", ms=3, label="mean confidence")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{label}: ECE {ece:.3f}")
        ax.set_ylabel("frequency of the positive label" if multilabel else "accuracy")
        if j == 0:
            ax.legend(loc="upper left", fontsize=8)
        axes[1, j].bar(centres, count, width=width * 0.95, color="grey")
        axes[1, j].set_xlabel("predicted probability" if multilabel else "confidence (top probability)")
        axes[1, j].set_ylabel("images" if not multilabel else "image × class")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- runs
@torch.no_grad()
def collect_logits(model: torch.nn.Module, loader) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``calibration_logits`` (one tensor per level; one for flat models) and targets over ``loader``."""
    was_training = model.training
    model.eval()
    outs: list[list[torch.Tensor]] = []
    targets = []
    for batch in loader:
        z = model.calibration_logits(batch["image"].to(model.device))
        z = list(z) if isinstance(z, list | tuple) else [z]
        if not outs:
            outs = [[] for _ in z]
        for store, zi in zip(outs, z, strict=True):
            store.append(zi.float().cpu())
        targets.append(model.calibration_targets(batch["target"].to(model.device)).cpu())
    model.train(was_training)
    if not targets:
        return [], torch.zeros(0)
    return [torch.cat(o) for o in outs], torch.cat(targets)


def _levels(
    logits: list[torch.Tensor], target: torch.Tensor, kind: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    if kind == "hierarchical":
        return [(z, target[:, i]) for i, z in enumerate(logits)]
    return [(logits[0], target)]


def _fit(
    model, logits: list[torch.Tensor], target: torch.Tensor, groups: Sequence[Any] | None = None
) -> tuple[torch.Tensor, dict[str, Any]]:
    kind = model.calibration_kind
    multilabel = kind == "multilabel"
    info: dict[str, Any] = {}
    if multilabel:
        scope, nll = choose_scope(logits[0], target)
        if model.hparams.get("decision_rule") == "reference_repo" and scope == "per_class":
            scope = "global"  # its top-1 fallback must keep its argmax: one temperature for all classes
        info = {"scope": scope, "heldout_nll": nll}
        return fit_temperature(logits[0], target, multilabel=True, per_class=scope == "per_class"), info
    ts = [fit_temperature(z, y) for z, y in _levels(logits, target, kind)]
    info["scope"] = "per_level" if kind == "hierarchical" else "global"
    if kind == "multiclass" and groups is not None:
        held = carries_across_groups(logits[0], target, groups)
        if held is not None:
            info["across_groups"] = held
            if held["fitted"] >= held["uncalibrated"]:
                info.update(scope="none: did not carry across validation groups", carried=False)
                return torch.ones(1), info
    return torch.cat(ts), info


def _probs(model, logits: list[torch.Tensor], temperature: torch.Tensor | None) -> list[torch.Tensor]:
    """Probabilities of the collected logits at ``temperature`` (None: 1)."""
    out = []
    for i, z in enumerate(logits):
        t = (
            torch.ones(1)
            if temperature is None
            else (temperature[i : i + 1] if model.calibration_kind == "hierarchical" else temperature)
        )
        out.append((z / t).sigmoid() if model.calibration_kind == "multilabel" else (z / t).softmax(-1))
    return out


def calibration_metrics(
    model, logits: list[torch.Tensor], target: torch.Tensor, stage: str, temperature: torch.Tensor | None
) -> tuple[dict[str, float], list[torch.Tensor], list[torch.Tensor]]:
    """``{stage}/ece`` (at ``temperature``) and ``{stage}/ece_uncalibrated``; hierarchical models also get
    ``{stage}/level{1,2,3}_ece`` (``test/ece`` is the leaf level's)."""
    kind = model.calibration_kind
    multilabel = kind == "multilabel"
    before, after = _probs(model, logits, None), _probs(model, logits, temperature)
    levels = _levels(logits, target, kind)
    out: dict[str, float] = {}
    for i, (_, y) in enumerate(levels):
        e0 = expected_calibration_error(before[i], y, multilabel)
        e1 = expected_calibration_error(after[i], y, multilabel)
        if kind == "hierarchical":
            out[f"{stage}/level{i + 1}_ece"], out[f"{stage}/level{i + 1}_ece_uncalibrated"] = e1, e0
        out[f"{stage}/ece"], out[f"{stage}/ece_uncalibrated"] = e1, e0  # the last (leaf) level's
    return out, before, after


def calibrate_run(
    model,
    datamodule,
    ckpt_path: str | Path | None,
    run_dir: str | Path,
    enabled: bool = True,
    batch_size: int | None = None,
) -> dict[str, float]:
    """Fit the temperature on the validation split, store it in ``model`` and ``ckpt_path``, and return
    ``val/temperature`` plus the validation ECE before/after. Test-split figures come from
    :func:`report_test_calibration` after the test loop."""
    if not hasattr(model, "calibration_logits"):
        return {}
    if not enabled:
        model.set_temperature(None)
        if ckpt_path:
            store_temperature(ckpt_path, None)
        return {}
    val = datamodule.splits.get("val") or []
    if not val:
        log.warning("calibrate=true but the validation split is empty: the model stays uncalibrated")
        return {}
    loader = torch.utils.data.DataLoader(
        datamodule.make_dataset(val, train=False), batch_size=batch_size or datamodule.hparams.batch_size
    )
    model.set_temperature(None)
    logits, target = collect_logits(model, loader)  # the loader keeps the records' order
    t, info = _fit(model, logits, target, [getattr(r, "group", None) for r in val])
    old_thr = model.thresholds.clone() if model.calibration_kind == "multilabel" else None
    carried = info.get("carried", True)
    model.set_temperature(t if carried else None)
    extra: dict[str, Any] = {}
    state: dict[str, torch.Tensor] = {}
    if old_thr is not None:  # same decisions: σ(z/T) ≥ σ(logit(t)/T) ⇔ σ(z) ≥ t
        new_thr = torch.sigmoid(torch.logit(old_thr.double().clamp(1e-6, 1 - 1e-6)) / t.double()).float()
        model.thresholds.copy_(new_thr.to(model.thresholds))
        extra["thresholds"] = [round(float(v), 6) for v in new_thr]
        state["thresholds"] = new_thr
    if ckpt_path:
        store_temperature(ckpt_path, t.tolist() if carried else None, extra, state)
    metrics, _, _ = calibration_metrics(model, logits, target, "val", t)
    metrics["val/temperature"] = float(t.log().mean().exp())  # geometric mean when there are several
    if "across_groups" in info:
        held = info["across_groups"]
        metrics["val/heldout_group_nll"] = held["fitted"]
        metrics["val/heldout_group_nll_uncalibrated"] = held["uncalibrated"]
        if not carried:
            log.warning(
                "calibration: a temperature fitted on the other validation groups did not lower a group's "
                "NLL overall (%.4f vs %.4f uncalibrated, cross-validated over the groups): the model stays "
                "uncalibrated (T = 1), as its confidence would not carry to unseen groups",
                held["fitted"],
                held["uncalibrated"],
            )
    log.info(
        "temperature fitted on %d validation images (%s): %s; val ECE %.4f → %.4f",
        len(val),
        info.get("scope"),
        ", ".join(f"{v:.3f}" for v in t.tolist()[:8]) + (" …" if len(t) > 8 else ""),
        metrics["val/ece_uncalibrated"],
        metrics["val/ece"],
    )
    if info.get("heldout_nll"):
        log.info(
            "multi-label temperature: held-out NLL global %.4f, per-class %.4f → %s",
            info["heldout_nll"]["global"],
            info["heldout_nll"]["per_class"],
            info["scope"],
        )
    return metrics


def report_test_calibration(
    model, datamodule, records, run_dir: str | Path, stage: str = "test", batch_size: int | None = None
) -> dict[str, float]:
    """``{stage}/ece`` and ``{stage}/ece_uncalibrated`` on ``records`` and ``{stage}_reliability_diagram.png``."""
    if not hasattr(model, "calibration_logits") or not records:
        return {}
    t = model.temperature.detach().cpu().clone() if model.is_calibrated else None
    tested = getattr(model, "test_predictions", None) or {}
    kept = [tested[k] for k in sorted(k for k in tested if k.startswith("calibration_logit_"))]
    if kept and len(kept[0]) == len(records):
        # the test that just ran on these records kept them (ANAModule.collect_test): no second pass
        logits, target = kept, tested["calibration_target"]
    else:
        loader = torch.utils.data.DataLoader(
            datamodule.make_dataset(records, train=False),
            batch_size=batch_size or datamodule.hparams.batch_size,
        )
        logits, target = collect_logits(model, loader)
    metrics, before, after = calibration_metrics(model, logits, target, stage, t)
    y = _levels(logits, target, model.calibration_kind)[-1][1]
    multilabel = model.calibration_kind == "multilabel"
    curves = {"uncalibrated": (before[-1], metrics[f"{stage}/ece_uncalibrated"])}
    if t is not None:
        tt = "T = " + (
            f"{float(t[-1]):.2f}" if len(t) <= 3 else f"{float(t.log().mean().exp()):.2f} (geometric mean)"
        )
        curves[f"calibrated ({tt})"] = (after[-1], metrics[f"{stage}/ece"])
    plot_reliability_diagram(
        curves,
        y,
        Path(run_dir) / f"{stage}_reliability_diagram.png",
        multilabel,
        title=f"{stage} split, {len(records)} images"
        + (" (leaf level)" if model.calibration_kind == "hierarchical" else ""),
    )
    return {k: v for k, v in metrics.items() if not math.isnan(v)}
