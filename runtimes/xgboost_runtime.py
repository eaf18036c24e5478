"""XGBoost gradient-boosted trees, saved in XGBoost's own JSON format. Missing table values stay
NaN: XGBoost learns a default direction for them at every split (missing diagnostics are imputed
first, see preprocessing.py). Explanations are XGBoost's own exact TreeSHAP, in margin space."""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from .base import FrameworkRuntime, Progress
from .explanation import Explanation
from .preprocessing import Preprocessor
from .schema import FEATURES, N_CLASSES

PARAMS = {
    "objective": "multi:softprob", "num_class": N_CLASSES, "eval_metric": "mlogloss",
    "tree_method": "hist", "max_depth": 5, "eta": 0.05, "subsample": 0.8, "colsample_bytree": 0.7,
    "min_child_weight": 2, "lambda": 1.0,
}


class XGBoostRuntime(FrameworkRuntime):
    name: ClassVar[str] = "xgboost"
    framework: ClassVar[str] = "xgboost"
    model_file: ClassVar[str] = "model.json"

    @staticmethod
    def framework_version() -> str:
        import xgboost

        return xgboost.__version__

    def fit(self, X, y, X_val, y_val, *, seed: int, fast: bool, progress: Progress,
            features: tuple[str, ...] = FEATURES, rounds: int | None = None) -> dict:
        """`rounds` given (a fold of an already tuned recipe): no early-stopping probe."""
        import xgboost as xgb

        self.preprocessor = prep = Preprocessor.fit(X, log_skewed=False, impute=False, standardize=False,
                                                    features=features)
        params = {**PARAMS, "seed": seed, "nthread": 2}
        names = list(features)
        if rounds is None:
            # Pick the number of rounds on the validation stars, then refit on all training stars.
            dval = xgb.DMatrix(prep.transform(X_val), label=y_val, feature_names=names)
            probe = xgb.train(params, xgb.DMatrix(prep.transform(X), label=y, feature_names=names),
                              60 if fast else 1500, evals=[(dval, "validation")], early_stopping_rounds=50,
                              verbose_eval=False)
            rounds = probe.best_iteration + 1
            progress(f"xgboost: {rounds} rounds chosen on the validation stars")
        X_all, y_all = np.vstack([X, X_val]), np.concatenate([y, y_val])
        self.model = xgb.train(params, xgb.DMatrix(prep.transform(X_all), label=y_all, feature_names=names), rounds)
        return {"params": params, "num_boost_round": rounds, "epochs": rounds, "training_samples": len(y_all)}

    def _save_model(self, path: Path) -> None:
        self.model.save_model(str(path))

    @classmethod
    def load(cls, directory: Path, threads: int | None = None) -> "XGBoostRuntime":
        import xgboost as xgb

        booster = xgb.Booster()
        booster.load_model(str(Path(directory) / cls.model_file))
        booster.set_param({"nthread": threads or 1})
        return cls(booster, Preprocessor.load(directory))

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = self.preprocessor.transform(X)
        return np.asarray(self.model.inplace_predict(X), dtype=np.float64).reshape(len(X), N_CLASSES)

    def explain(self, X: np.ndarray) -> Explanation:
        """Exact TreeSHAP per class in margin space: base_value + values add up to the margin whose
        softmax predict_proba returns (to float32 rounding). Table NaNs reach the trees as missing,
        exactly as in predict_proba, so each row follows the same default directions."""
        import xgboost as xgb

        inputs = np.asarray(X, dtype=np.float64)
        prepared = self.preprocessor.transform(X)
        n, width = len(prepared), len(self.features) + 1
        matrix = xgb.DMatrix(prepared, missing=np.nan, feature_names=list(self.features), nthread=self._threads())
        contributions = np.asarray(self.model.predict(matrix, pred_contribs=True), dtype=np.float64)
        if contributions.size != n * N_CLASSES * width:
            raise ValueError(f"pred_contribs returned shape {list(contributions.shape)}, expected "
                             f"[{n}, {N_CLASSES}, {width}]")
        # [n, classes, features + 1] (older releases flatten the classes, in the same order); bias last.
        contributions = contributions.reshape(n, N_CLASSES, width)
        margin = np.asarray(self.model.inplace_predict(prepared, predict_type="margin"), dtype=np.float64)
        return Explanation(
            method="tree_shap", output_space="margin", features=self.features,
            values=contributions[:, :, :-1], base_value=contributions[:, :, -1],
            output=margin.reshape(n, N_CLASSES), probabilities=self.predict_proba(X), inputs=inputs,
            details={"algorithm": "XGBoost pred_contribs (exact TreeSHAP)",
                     "link": "softmax over the margins gives the probabilities"})

    def _threads(self) -> int | None:
        """The booster's nthread (set at load), so building the DMatrix uses no more threads."""
        import json

        threads = int(json.loads(self.model.save_config())["learner"]["generic_param"]["nthread"])
        return threads if threads > 0 else None


RUNTIME = XGBoostRuntime
