"""Calibrated probabilities: per-label maps fitted on dev, calibration error, reliability bins.

A model's raw score for a label is trained with a class-weighted loss, so "0.8" is a rank, not
a frequency. A calibration maps each label's raw score through a non-decreasing function fitted
on the dev split, chosen per label among:

- ``temperature``: ``sigmoid(logit(p) / T)``, one parameter;
- ``platt``: ``sigmoid(a * logit(p) + b)`` with ``a > 0``, temperature with a shift (the class
  weighting moves every score of a rare label up, which a temperature cannot undo);
- ``isotonic``: isotonic regression (scikit-learn), stored as knots through the centres of its
  blocks and read by linear interpolation, so scores between two blocks keep their order.

``auto`` picks, per label, the method with the lowest cross-validated Brier score on dev.
Calls stay on the raw scores (see :meth:`LabelCalibration.raw_threshold`), so a calibration never
changes which labels a model calls at its own thresholds.

The calibration is JSON numbers in the model's metadata; :meth:`Calibration.from_meta` reads it
as hostile input (types, counts, ranges and monotonicity checked).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from synnav_cli.errors import UserError, quoted

METHODS = ("temperature", "platt", "isotonic")
CHOICES = ("auto", *METHODS)
BINS = 10  # equal-width bins for the expected calibration error and reliability plots
MAX_KNOTS = 2000  # isotonic knots kept in the metadata; more are thinned evenly
# A label needs this many known dev values, of each class, to be calibrated: fewer leave a
# map that says more about the sample than about the model.
MIN_CLASS = 5
FOLDS = 5
EPS = 1e-6  # keeps logit finite at scores of exactly 0 or 1
# A raw threshold no score reaches (scores are at most 1). Finite, unlike the threshold of a
# label without training data, which also keeps that label out of ``top``.
UNREACHABLE = 2.0


def _known(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    mask = ~np.isnan(y)
    return y[mask].astype(int), p[mask]


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = BINS) -> float | None:
    """Weighted mean over equal-width probability bins of |share positive - mean probability|,
    over the known values of ``y``; None when none is known."""
    y, p = _known(y, p)
    if y.size == 0:
        return None
    error = 0.0
    for _, mean_p, share, count in reliability_bins(y, p, bins):
        error += count * abs(share - mean_p)
    return round(error / y.size, 6)


def reliability_bins(
    y: np.ndarray, p: np.ndarray, bins: int = BINS
) -> list[tuple[int, float, float, int]]:
    """Non-empty bins as ``(bin, mean probability, share positive, count)``, known values only."""
    y, p = _known(y, p)
    index = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        chosen = index == b
        if chosen.any():
            out.append((b, float(p[chosen].mean()), float(y[chosen].mean()), int(chosen.sum())))
    return out


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=float)))


@dataclass(frozen=True)
class LabelCalibration:
    """One label's map from raw score to calibrated probability."""

    method: str
    scale: float = 1.0  # temperature and platt: sigmoid(scale * logit(p) + bias)
    bias: float = 0.0
    x: tuple[float, ...] = ()  # isotonic knots, strictly increasing in x and in y
    y: tuple[float, ...] = ()

    def apply(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=float)
        if self.method == "isotonic":
            return np.interp(p, self.x, self.y)
        return _sigmoid(self.scale * _logit(p) + self.bias)

    def raw_threshold(self, t: float) -> float:
        """The smallest raw score whose calibrated probability is at least ``t``, so that
        ``raw >= raw_threshold(t)`` exactly when ``apply(raw) >= t``; :data:`UNREACHABLE` when
        no score reaches ``t``."""
        if self.method == "isotonic":
            x, y = np.asarray(self.x), np.asarray(self.y)
            if t <= y[0]:
                return 0.0
            if t > y[-1]:
                return UNREACHABLE
            k = int(np.searchsorted(y, t))  # first knot with y >= t; k >= 1 here
            return float(x[k - 1] + (t - y[k - 1]) * (x[k] - x[k - 1]) / (y[k] - y[k - 1]))
        lowest, highest = self.apply(np.array([0.0, 1.0]))
        if t <= lowest:
            return 0.0
        if t > highest:
            return UNREACHABLE
        z = (math.log(t) - math.log1p(-t) - self.bias) / self.scale
        return float(_sigmoid(z))

    def to_json(self) -> dict:
        if self.method == "isotonic":
            return {"method": "isotonic", "x": list(self.x), "y": list(self.y)}
        if self.method == "temperature":
            return {"method": "temperature", "temperature": round(1.0 / self.scale, 6)}
        return {"method": "platt", "scale": round(self.scale, 6), "bias": round(self.bias, 6)}


def fit_label(y: np.ndarray, p: np.ndarray, method: str) -> LabelCalibration | None:
    """Fit ``method`` on the known values of one label; None where it cannot give a map
    (one class only, a Platt slope that is not positive, an isotonic fit that is flat)."""
    y, p = _known(y, p)
    if y.size == 0 or y.min() == y.max():
        return None
    z = _logit(p)
    if method == "temperature":
        return _fit_logistic(z, y, shift=False)
    if method == "platt":
        return _fit_logistic(z, y, shift=True)
    if method == "isotonic":
        return _fit_isotonic(p, y)
    raise UserError(f"unknown calibration method {method!r}; choose {', '.join(CHOICES)}")


def _fit_logistic(z: np.ndarray, y: np.ndarray, shift: bool) -> LabelCalibration | None:
    from scipy.optimize import minimize

    def loss(params: np.ndarray) -> float:
        logits = params[0] * z + (params[1] if shift else 0.0)
        # log(1 + e^x) - y x, written stably
        return float(np.mean(np.logaddexp(0.0, logits) - y * logits))

    start = np.array([1.0, 0.0]) if shift else np.array([1.0])
    # Scales between 1/100 and 100: a temperature of 100 already makes every score 0.5.
    bounds = [(0.01, 100.0), (-50.0, 50.0)] if shift else [(0.01, 100.0)]
    found = minimize(loss, start, method="L-BFGS-B", bounds=bounds)
    scale = float(found.x[0])
    bias = float(found.x[1]) if shift else 0.0
    if not (math.isfinite(scale) and math.isfinite(bias)) or scale <= 0:
        return None
    return LabelCalibration("platt" if shift else "temperature", scale=scale, bias=bias)


def _fit_isotonic(p: np.ndarray, y: np.ndarray) -> LabelCalibration | None:
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
    xs, ys = np.asarray(fitted.X_thresholds_), np.asarray(fitted.y_thresholds_)
    # Each block of equal fitted values becomes one knot at the block's centre: a step function
    # would give every protein in a block the same probability and lose their order.
    knots_x, knots_y = [], []
    start = 0
    for end in range(1, len(ys) + 1):
        if end == len(ys) or ys[end] != ys[start]:
            knots_x.append(float(xs[start:end].mean()))
            knots_y.append(float(ys[start]))
            start = end
    if len(knots_x) < 2:
        return None
    if len(knots_x) > MAX_KNOTS:
        keep = np.unique(np.linspace(0, len(knots_x) - 1, MAX_KNOTS).round().astype(int))
        knots_x = [knots_x[i] for i in keep]
        knots_y = [knots_y[i] for i in keep]
    x, y = np.round(knots_x, 6), np.round(knots_y, 6)
    if not (np.all(np.diff(x) > 0) and np.all(np.diff(y) > 0)):
        # rounding merged neighbours: keep the first of each run
        keep = np.concatenate([[True], (np.diff(x) > 0) & (np.diff(y) > 0)])
        x, y = x[keep], y[keep]
    if len(x) < 2:
        return None
    return LabelCalibration("isotonic", x=tuple(map(float, x)), y=tuple(map(float, y)))


def choose_method(y: np.ndarray, p: np.ndarray, seed: int = 0) -> str | None:
    """The method with the lowest cross-validated Brier score on (y, p); None when a class has
    fewer than ``MIN_CLASS`` known values."""
    from sklearn.model_selection import StratifiedKFold

    y, p = _known(y, p)
    positives = int(y.sum())
    if min(positives, y.size - positives) < MIN_CLASS:
        return None
    folds = StratifiedKFold(n_splits=min(FOLDS, positives, y.size - positives), shuffle=True,
                            random_state=seed)
    scores = {}
    for method in METHODS:
        calibrated = p.copy()
        usable = True
        for fit_rows, held_rows in folds.split(p.reshape(-1, 1), y):
            fitted = fit_label(y[fit_rows], p[fit_rows], method)
            if fitted is None:
                usable = False
                break
            calibrated[held_rows] = fitted.apply(p[held_rows])
        if usable:
            scores[method] = brier(y, calibrated)
    # METHODS runs from fewest parameters to most, and min keeps the first of equal scores.
    return min(scores, key=scores.get) if scores else None


@dataclass
class Calibration:
    """Per-label maps (None: that label is not calibrated) in the model's label order."""

    label_names: list[str]
    maps: list[LabelCalibration | None]
    fitted_on: str = "dev"

    @property
    def calibrated_labels(self) -> list[str]:
        return [n for n, m in zip(self.label_names, self.maps) if m is not None]

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        """Calibrated probabilities for raw scores ``[proteins, labels]`` (float32, as scored)."""
        out = np.array(probabilities, dtype=np.float32, copy=True)
        for j, mapping in enumerate(self.maps):
            if mapping is not None:
                out[..., j] = mapping.apply(out[..., j])
        return out

    def shown_threshold(self, j: int, raw: float) -> float:
        """A raw threshold on the calibrated scale."""
        mapping = self.maps[j]
        if mapping is None or not math.isfinite(raw):
            return raw
        return float(mapping.apply(np.array([min(raw, 1.0)]))[0])

    def to_meta(self, dev_ece: dict | None = None) -> dict:
        labels = {}
        for name, mapping in zip(self.label_names, self.maps):
            entry = mapping.to_json() if mapping is not None else {"method": "none"}
            if dev_ece and name in dev_ece:
                entry["dev_ece"] = dev_ece[name]
            labels[name] = entry
        return {"fitted_on": self.fitted_on, "bins": BINS, "labels": labels}

    @classmethod
    def from_meta(cls, meta: object, label_names: list[str]) -> Calibration | None:
        """The calibration stored in a model's metadata (None when there is none), checked."""
        if meta is None:
            return None
        problem = calibration_problem(meta, label_names)
        if problem:
            raise UserError(f"the model's calibration is damaged: {problem}")
        maps = [_read_label(meta["labels"].get(name)) for name in label_names]
        return cls(list(label_names), maps, str(meta.get("fitted_on", "dev")))


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_label(entry: dict | None) -> LabelCalibration | None:
    if entry is None or entry["method"] == "none":
        return None
    if entry["method"] == "temperature":
        return LabelCalibration("temperature", scale=1.0 / float(entry["temperature"]))
    if entry["method"] == "platt":
        return LabelCalibration("platt", scale=float(entry["scale"]), bias=float(entry["bias"]))
    return LabelCalibration(
        "isotonic", x=tuple(map(float, entry["x"])), y=tuple(map(float, entry["y"]))
    )


def calibration_problem(meta: object, label_names: list[str]) -> str | None:
    """What is wrong with a stored calibration, or None."""
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict):
        return "expected an object with 'labels'"
    unknown = next((n for n in meta["labels"] if n not in label_names), None)
    if unknown is not None:
        return f"{quoted(unknown)} is not one of the model's labels"
    for name, entry in meta["labels"].items():
        problem = _label_problem(entry)
        if problem:
            return f"{quoted(name)}: {problem}"
    return None


def _label_problem(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return "expected an object"
    method = entry.get("method")
    if method == "none":
        return None
    if method == "temperature":
        t = entry.get("temperature")
        return None if _number(t) and 0.01 <= t <= 100 else "temperature must be 0.01 to 100"
    if method == "platt":
        a, b = entry.get("scale"), entry.get("bias")
        if not (_number(a) and 0.01 <= a <= 100 and _number(b) and -50 <= b <= 50):
            return "platt needs a scale of 0.01 to 100 and a bias of -50 to 50"
        return None
    if method == "isotonic":
        x, y = entry.get("x"), entry.get("y")
        if not (isinstance(x, list) and isinstance(y, list) and 2 <= len(x) == len(y) <= MAX_KNOTS):
            return f"isotonic needs 2 to {MAX_KNOTS} knots, as many x as y"
        if not all(_number(v) and 0.0 <= v <= 1.0 for v in (*x, *y)):
            return "isotonic knots must be numbers from 0 to 1"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not (np.all(np.diff(x) > 0) and np.all(np.diff(y) > 0)):
                return "isotonic knots must increase"
        return None
    return f"unknown method {quoted(method)}"


def fit_calibration(
    labels: np.ndarray,
    probabilities: np.ndarray,
    label_names: list[str],
    method: str = "auto",
    *,
    skip: tuple[int, ...] = (),
) -> tuple[Calibration, dict[str, list[float | None]]]:
    """Fit one map per label on dev (``labels`` 1, 0 or NaN; raw ``probabilities``).

    ``method`` is ``auto`` (per label, see :func:`choose_method`) or one of :data:`METHODS`;
    labels in ``skip`` (never trained) and labels with fewer than ``MIN_CLASS`` values of a class
    stay uncalibrated. Returns the calibration and each label's dev ECE ``[before, after]``.
    """
    if method not in CHOICES:
        raise UserError(f"unknown calibration method {method!r}; choose {', '.join(CHOICES)}")
    maps: list[LabelCalibration | None] = []
    dev_ece: dict[str, list[float | None]] = {}
    for j, name in enumerate(label_names):
        y, p = labels[:, j], probabilities[:, j]
        known_y, _ = _known(y, p)
        positives = int(known_y.sum())
        # A label the model gives every protein the same score (one it never learned) has
        # nothing to calibrate.
        varied = known_y.size > 0 and float(np.ptp(p[~np.isnan(y)])) > 0
        enough = varied and min(positives, known_y.size - positives) >= MIN_CLASS
        mapping = None
        if j not in skip and enough:
            chosen = choose_method(y, p) if method == "auto" else method
            mapping = fit_label(y, p, chosen) if chosen else None
        maps.append(mapping)
        after = p if mapping is None else mapping.apply(p)
        dev_ece[name] = [expected_calibration_error(y, p), expected_calibration_error(y, after)]
    return Calibration(list(label_names), maps), dev_ece


def calibration_report(
    labels: np.ndarray,
    raw: np.ndarray,
    calibrated: np.ndarray | None,
    label_names: list[str],
) -> dict:
    """Per label ECE and Brier score of the raw scores and, when given, the calibrated ones."""
    per_label = {}
    for j, name in enumerate(label_names):
        y, p = _known(labels[:, j], raw[:, j])
        entry = {
            "ece_raw": expected_calibration_error(y, p),
            "brier_raw": round(brier(y, p), 6) if y.size else None,
        }
        if calibrated is not None:
            _, q = _known(labels[:, j], calibrated[:, j])
            entry["ece"] = expected_calibration_error(y, q)
            entry["brier"] = round(brier(y, q), 6) if y.size else None
        per_label[name] = entry
    keys = {k for entry in per_label.values() for k in entry}
    mean = {}
    for key in sorted(keys):
        values = [e[key] for e in per_label.values() if e.get(key) is not None]
        mean[key] = round(float(np.mean(values)), 6) if values else None
    return {"labels": per_label, "mean": mean}


def calibration_line(calibration: Calibration | None) -> str:
    """One line for stderr: whether the probabilities shown are calibrated, and how."""
    if calibration is None or not calibration.calibrated_labels:
        return (
            "Probabilities: uncalibrated (the model's scores: they rank proteins, but 0.8 need "
            "not mean 80%); the calibration column says so on every row."
        )
    methods = [
        f"{name.replace(' ', '_')} {m.method if m else 'none'}"
        for name, m in zip(calibration.label_names, calibration.maps)
    ]
    return (
        f"Probabilities: calibrated on {calibration.fitted_on} ({', '.join(methods)}); calls "
        "are made on the model's scores at its thresholds, as without calibration."
    )
