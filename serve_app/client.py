"""A small Python client for the kepler-serve REST API.

    from serve_app.client import KeplerClient
    client = KeplerClient("http://127.0.0.1:8000", api_key=None, timeout=10)
    result = client.predict({"koi_period": 9.49, "koi_depth": 615.8}, model="ensemble")
    print(result.prediction, result.probabilities)

Retries with exponential backoff on 503, 429 (honouring Retry-After) and connection errors;
never on other 4xx, which mean the request itself is wrong. Needs only `requests`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import requests

RETRY_STATUSES = {429, 503}


class KeplerError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


@dataclass
class Prediction:
    prediction: str
    probabilities: dict[str, float] | None
    model: str
    version: str
    request_id: str
    latency_ms: float
    ensemble: dict | None = None
    all_models: list[dict] | None = None


@dataclass
class BatchPrediction:
    predictions: list[dict]
    model: str
    version: str
    request_id: str
    latency_ms: float
    ensemble: dict | None = None
    all_models: dict | None = None

    @property
    def labels(self) -> list[str]:
        return [p["prediction"] for p in self.predictions]


@dataclass
class KeplerClient:
    base_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    timeout: float = 10.0
    retries: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    session: requests.Session = field(default_factory=requests.Session)

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(method, self.base_url.rstrip("/") + path, json=body,
                                                headers=headers, timeout=self.timeout)
            except requests.ConnectionError:
                if attempt == self.retries:
                    raise
                time.sleep(self._delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                time.sleep(self._delay(attempt, response.headers.get("Retry-After")))
                continue
            if response.status_code >= 400:
                try:
                    message = response.json().get("error") or response.text
                except ValueError:
                    message = response.text
                raise KeplerError(response.status_code, message)
            return response.json()
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(float(retry_after), self.max_backoff_s)
            except ValueError:
                pass
        return min(self.backoff_s * 2 ** attempt, self.max_backoff_s)

    def predict(self, features: Sequence[float | None] | dict[str, float | None], model: str = "auto",
                version: str | None = None, return_all_models: bool = False) -> Prediction:
        body = {"features": list(features) if not isinstance(features, dict) else features, "model": model,
                "version": version, "return_all_models": return_all_models}
        return Prediction(**self._request("POST", "/api/v1/predict", body))

    def predict_batch(self, instances: Sequence, model: str = "auto", version: str | None = None,
                      return_all_models: bool = False) -> BatchPrediction:
        body = {"instances": [dict(r) if isinstance(r, dict) else list(r) for r in instances], "model": model,
                "version": version, "return_all_models": return_all_models}
        return BatchPrediction(**self._request("POST", "/api/v1/predict/batch", body))

    def models(self) -> dict:
        return self._request("GET", "/api/v1/models")

    def model_info(self, name: str, version: str | None = None) -> dict:
        return self._request("GET", f"/api/v1/models/{name}/info" + (f"?version={version}" if version else ""))

    def health(self) -> dict:
        return self._request("GET", "/api/v1/health")
