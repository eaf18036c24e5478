"""Fitting the ensemble record out of sample: star folds over the non-test stars, out-of-fold member
probabilities, a temperature per member, then member weights on the simplex. The test stars are
never touched, so the record's effect can still be measured on them."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import minimize, minimize_scalar
from scipy.special import log_softmax

from runtimes.ensemble import EPSILON, EnsembleRecord, calibrate, combine
from runtimes.schema import N_CLASSES

from .data import TEST_PERCENT, star_bucket
from .evaluate import expected_calibration_error

N_FOLDS = 5
FOLD_WIDTH = (100 - TEST_PERCENT) // N_FOLDS  # 16 buckets a fold
STAR_RULE = (f"test stars (bucket < {TEST_PERCENT}) are never used; fold = (bucket - {TEST_PERCENT}) // "
             f"{FOLD_WIDTH} over sha256(kepid) % 100, so a star's KOIs share one fold")
TEMPERATURE_BOUNDS = (0.05, 20.0)
METHOD = ("temperature-scaled members, weighted average of probabilities; temperatures and weights "
          "minimise out-of-fold log loss over star folds")

FitPredict = Callable[..., np.ndarray]  # (train_rows=, predict_rows=) -> [len(predict_rows), N_CLASSES]


def star_fold(kepid: int) -> int | None:
    """The star's fold in 0..N_FOLDS-1, or None for a test star."""
    bucket = star_bucket(kepid)
    return None if bucket < TEST_PERCENT else (bucket - TEST_PERCENT) // FOLD_WIDTH


def fold_ids(kepids: np.ndarray) -> np.ndarray:
    """Per row: its star's fold, -1 for test stars."""
    folds = (star_fold(k) for k in np.asarray(kepids).ravel())
    return np.fromiter((-1 if f is None else f for f in folds), dtype=np.int64)


def out_of_fold(fit_predict: FitPredict, n_rows: int, folds: np.ndarray,
                progress: Callable[[str], None] | None = None) -> np.ndarray:
    """[n_rows, N_CLASSES] probabilities, each row predicted by a model that never saw its star's
    fold; NaN for test-star rows (fold -1), which no model trains on or predicts."""
    folds = np.asarray(folds)
    if folds.shape != (n_rows,) or not np.isin(folds, np.arange(-1, N_FOLDS)).all():
        raise ValueError(f"folds: {n_rows} values in -1..{N_FOLDS - 1}")
    out = np.full((n_rows, N_CLASSES), np.nan)
    for k in range(N_FOLDS):
        train_rows, predict_rows = np.flatnonzero((folds >= 0) & (folds != k)), np.flatnonzero(folds == k)
        if predict_rows.size == 0:
            continue
        predicted = np.asarray(fit_predict(train_rows=train_rows, predict_rows=predict_rows), dtype=np.float64)
        if predicted.shape != (predict_rows.size, N_CLASSES):
            raise ValueError(f"fold {k}: fit_predict returned {predicted.shape}, "
                             f"expected {(predict_rows.size, N_CLASSES)}")
        out[predict_rows] = predicted
        if progress:
            progress(f"out-of-fold {k + 1}/{N_FOLDS}: trained on {train_rows.size} rows, "
                     f"predicted {predict_rows.size}")
    return out


def log_loss(probabilities: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true labels (probabilities clipped at EPSILON)."""
    picked = np.asarray(probabilities)[np.arange(len(y)), np.asarray(y)]
    return float(-np.log(np.clip(picked, EPSILON, 1.0)).mean())


def fit_temperature(probabilities: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the NLL of calibrate(p, T), searched on log T within TEMPERATURE_BOUNDS."""
    logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1.0))
    rows, y = np.arange(len(y)), np.asarray(y)

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[rows, y].mean())

    result = minimize_scalar(nll, bounds=np.log(TEMPERATURE_BOUNDS), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


def fit_weights(calibrated: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Simplex weights minimising the log loss of the weighted average (SLSQP from uniform, so
    deterministic); rounded to 6 decimals and renormalized, so a member that only hurts gets 0."""
    names = sorted(calibrated)
    if len(names) == 1:
        return {names[0]: 1.0}
    rows, y = np.arange(len(y)), np.asarray(y)
    # Only the true label's probability enters the log loss: q[i, m] = p_m[i, y_i].
    q = np.stack([np.asarray(calibrated[m], dtype=np.float64)[rows, y] for m in names], axis=1)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        mix = np.clip(q @ w, EPSILON, None)
        return float(-np.log(mix).mean()), -(q / mix[:, None]).mean(axis=0)

    start = np.full(len(names), 1.0 / len(names))
    result = minimize(loss, start, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * len(names),
                      constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
                      options={"ftol": 1e-12, "maxiter": 500})
    weights = np.round(np.clip(result.x, 0.0, None), 6)
    if weights.sum() <= 0:  # cannot happen from a feasible point; keep the record valid regardless
        weights = start
    weights = weights / weights.sum()
    return {m: float(w) for m, w in zip(names, weights)}


def fit_record(version: str, oof: dict[str, np.ndarray], y: np.ndarray,
               excluded: dict[str, str] | None = None) -> EnsembleRecord:
    """Temperatures per member, then weights on the calibrated out-of-fold probabilities. Rows any
    member did not predict (test stars: NaN) are left out of the fit."""
    excluded = dict(excluded or {})
    if not oof:
        raise ValueError("oof: no member probabilities")
    if clash := sorted(set(excluded) & set(oof)):
        raise ValueError(f"{clash}: both given out-of-fold probabilities and excluded")
    names = sorted(oof)
    y = np.asarray(y)
    used = np.all([np.isfinite(oof[m]).all(axis=1) for m in names], axis=0)
    if not used.any():
        raise ValueError("no row has out-of-fold probabilities from every member")
    raw = {m: np.asarray(oof[m], dtype=np.float64)[used] for m in names}
    y_used = y[used]
    temperatures = {m: round(fit_temperature(raw[m], y_used), 6) for m in names}
    calibrated = {m: calibrate(raw[m], temperatures[m]) for m in names}
    weights = fit_weights(calibrated, y_used)
    for m in names:
        if weights[m] == 0:
            excluded[m] = "weight 0: adding it did not lower the out-of-fold log loss"
    plain = sum(raw.values()) / len(names)
    record = EnsembleRecord(version=version, members=names, weights=weights, temperatures=temperatures,
                            method=METHOD, fitted_on={}, excluded=excluded)
    fitted = combine(record, raw)
    facts = {
        "rows": int(used.sum()), "rows_left_out": int((~used).sum()), "folds": N_FOLDS, "star_rule": STAR_RULE,
        "log_loss": {"plain_average": round(log_loss(plain, y_used), 6), "fitted": round(log_loss(fitted, y_used), 6)},
        "expected_calibration_error": {"plain_average": round(expected_calibration_error(y_used, plain), 6),
                                       "fitted": round(expected_calibration_error(y_used, fitted), 6)},
        "members": {m: {"log_loss": round(log_loss(raw[m], y_used), 6),
                        "log_loss_calibrated": round(log_loss(calibrated[m], y_used), 6)} for m in names},
    }
    return record.model_copy(update={"fitted_on": facts})
