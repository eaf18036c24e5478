"""A small Python client for the kepler-serve REST API.

    from serve_app.client import KeplerClient
    client = KeplerClient("http://127.0.0.1:8000", api_key=None, timeout=10)
    result = client.predict({"koi_period": 9.49, "koi_depth": 615.8}, model="ensemble")
    print(result.prediction, result.probabilities)

Retries are urllib3's `Retry`, mounted on the client's `requests.Session` through an `HTTPAdapter`
(needs only `requests` and urllib3 2.x, which it brings):

- 429 and 503 are retried up to `retries` times, honouring `Retry-After` (capped at `max_backoff_s`),
  otherwise after an exponential backoff of `backoff_s`, 2*`backoff_s`, 4*`backoff_s`, ... capped at
  `max_backoff_s`. Once retries are exhausted the last answer raises `KeplerError` with its status and
  the server's `error` message.
- Connection errors (refused, connect timeout) and failed reads are retried the same number of times,
  for GET and POST alike: predictions are idempotent. Once exhausted the client raises
  `KeplerConnectionError`, a subclass of both `requests.ConnectionError` and the built-in
  `ConnectionError`, naming the URL and the number of attempts.
- A 500 that is not JSON comes from Serve's proxy, not the service: the replica holding the request
  died under it (a router SIGKILLed). It is sent again the same number of times. The service's own
  500s are JSON and are never retried.
- 400, 404, 413 and 422 (any other 4xx, in fact) mean the request itself is wrong: they are never
  retried and raise `KeplerError` at once, even with a `Retry-After` header.

A `session` passed in gets the retrying adapter mounted on it for http:// and https://.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

RETRY_STATUSES = frozenset({429, 503})
# The request itself is wrong (bad body, unknown model or version, too large, failed validation):
# retrying cannot help, so these are never retried.
NEVER_RETRY_STATUSES = frozenset({400, 404, 413, 422})
RETRY_METHODS = frozenset({"GET", "POST"})  # POST too: predictions are idempotent
MISSING_VALUE = -3.0e38  # V2's stand-in for a missing feature: inside float32, far from any real value


class _Retry(Retry):
    """urllib3's Retry with this API's rules on top of the defaults."""

    # urllib3 also retries a 413 that carries Retry-After; here only the statuses above are retried.
    RETRY_AFTER_STATUS_CODES = RETRY_STATUSES

    def __init__(self, *args, log: list | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.log = log  # where each retried answer or error is noted, when the caller keeps one

    def new(self, **changes) -> "_Retry":
        retry = super().new(**changes)
        retry.log = self.log
        return retry

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if self.log is not None:
            self.log.append(Retried(response.status if response is not None else None,
                                    type(error).__name__ if error is not None else None,
                                    response is not None and "Retry-After" in response.headers))
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def get_backoff_time(self) -> float:
        # urllib3 retries the first failure at once; back off before every retry instead:
        # backoff_factor * 2**(n - 1) after the n-th consecutive failure, capped at backoff_max.
        if len(self.history) <= 1:
            return float(max(0.0, min(self.backoff_max, self.backoff_factor)))
        return super().get_backoff_time()

    def get_retry_after(self, response) -> float | None:
        try:
            return super().get_retry_after(response)
        except InvalidHeader:  # an unparsable Retry-After falls back to the backoff
            return None


def _lost_in_flight(response: requests.Response) -> bool:
    """A 500 that is not the service's own JSON error: Serve's proxy saying the replica that held the
    request died under it (the service answers its own faults in JSON, and those are never retried).
    Predictions are idempotent, so such a request is sent again like a refused connection."""
    return response.status_code == 500 and not response.headers.get("content-type", "").startswith("application/json")


@dataclass(frozen=True)
class Retried:
    """One answer or error that was retried: the status (None for a connection error), the
    error's name, and whether the answer said when to retry."""

    status: int | None
    error: str | None
    retry_after: bool


def make_retry(retries: int, backoff_s: float, max_backoff_s: float, log: list | None = None) -> Retry:
    """The retry policy of `KeplerClient`, for mounting on any `requests.Session`."""
    return _Retry(total=retries, connect=retries, read=retries, status=retries,
                  allowed_methods=RETRY_METHODS, status_forcelist=RETRY_STATUSES,
                  backoff_factor=backoff_s, backoff_max=max_backoff_s,
                  respect_retry_after_header=True, retry_after_max=max_backoff_s,
                  raise_on_status=False, log=log)


class KeplerError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class KeplerConnectionError(requests.ConnectionError, ConnectionError):
    """The server could not be reached (or stopped answering) after every retry."""


class _Answer:
    @classmethod
    def of(cls, body: dict):
        """Fields this client knows; the rest (from a newer server) kept in `extra`, never an error."""
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in body.items() if k in known},
                   extra={k: v for k, v in body.items() if k not in known})


@dataclass
class Prediction(_Answer):
    prediction: str
    probabilities: dict[str, float] | None
    model: str
    version: str
    request_id: str
    latency_ms: float
    variant: str | None = None
    ensemble: dict | None = None
    all_models: list[dict] | None = None
    missing_features: list[str] | None = None  # what the version needed and the row lacked
    koi: str | None = None  # asked by name: the KOI, its archive disposition, the catalogue used
    disposition: str | None = None
    in_training_set: bool | None = None
    catalogue_version: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class BatchPrediction(_Answer):
    predictions: list[dict]
    model: str
    version: str
    request_id: str
    latency_ms: float
    variant: str | None = None
    ensemble: dict | None = None
    all_models: dict | None = None
    catalogue_version: str | None = None
    extra: dict = field(default_factory=dict)

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
    retry_log: list[Retried] | None = None  # a list to note every retry in (soaks, diagnostics)

    def __post_init__(self) -> None:
        adapter = HTTPAdapter(max_retries=make_retry(self.retries, self.backoff_s, self.max_backoff_s, self.retry_log))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = self.base_url.rstrip("/") + path
        try:
            response = self.session.request(method, url, json=body, headers=headers, timeout=self.timeout)
            for attempt in range(self.retries):
                if not _lost_in_flight(response):
                    break
                if self.retry_log is not None:
                    self.retry_log.append(Retried(response.status_code, "lost in flight", False))
                time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** attempt))
                response = self.session.request(method, url, json=body, headers=headers, timeout=self.timeout)
        except requests.ConnectionError as error:
            reason = getattr(error.args[0], "reason", None) if error.args else None
            attempts = f"{self.retries + 1} attempt" + ("s" if self.retries else "")
            raise KeplerConnectionError(f"{method} {url} failed after {attempts}: {reason or error}",
                                        request=error.request) from error
        if response.status_code >= 400:
            try:
                message = response.json().get("error") or response.text
            except (ValueError, AttributeError):
                message = response.text
            raise KeplerError(response.status_code, message)
        return response.json()

    def predict(self, features: Sequence[float | None] | dict[str, float | None], model: str = "auto",
                version: str | None = None, return_all_models: bool = False) -> Prediction:
        body = {"features": list(features) if not isinstance(features, dict) else features, "model": model,
                "version": version, "return_all_models": return_all_models}
        return Prediction.of(self._request("POST", "/api/v1/predict", body))

    def predict_koi(self, name: str | int, model: str = "auto", version: str | None = None) -> Prediction | BatchPrediction:
        """By name (K00752.01, Kepler-227 b); a KIC id answers for each KOI of that star, as a batch."""
        body = self._request("POST", "/api/v1/predict", {"koi": name, "model": model, "version": version})
        return BatchPrediction.of(body) if "predictions" in body else Prediction.of(body)

    def predict_batch(self, instances: Sequence, model: str = "auto", version: str | None = None,
                      return_all_models: bool = False) -> BatchPrediction:
        body = {"instances": [dict(r) if isinstance(r, dict) else list(r) for r in instances], "model": model,
                "version": version, "return_all_models": return_all_models}
        return BatchPrediction.of(self._request("POST", "/api/v1/predict/batch", body))

    def explain(self, features: Sequence[float | None] | dict[str, float | None] | None = None,
                model: str = "xgboost", version: str | None = None, koi: str | None = None) -> dict:
        """Per-feature contributions to each class (POST /api/v1/explain), for one row or one KOI."""
        body = {"model": model, "version": version}
        body.update({"koi": koi} if koi is not None else {"features": features if isinstance(features, dict)
                                                             else list(features)})
        return self._request("POST", "/api/v1/explain", body)

    def infer(self, model: str, rows: Sequence[Sequence[float | None]]) -> dict:
        """Open Inference Protocol V2: the rows as one FP64 tensor; V2 has no null, so a missing
        value (None) is sent as the tensor's `missing_value` parameter. The answer as the server sent it."""
        data = [MISSING_VALUE if v is None else float(v) for row in rows for v in row]
        tensor = {"name": "features", "shape": [len(rows), len(rows[0]) if rows else 0], "datatype": "FP64",
                  "data": data}
        if MISSING_VALUE in data:
            tensor["parameters"] = {"missing_value": MISSING_VALUE}
        return self._request("POST", f"/v2/models/{model}/infer", {"inputs": [tensor]})

    def models(self) -> dict:
        return self._request("GET", "/api/v1/models")

    def model_info(self, name: str, version: str | None = None) -> dict:
        return self._request("GET", f"/api/v1/models/{name}/info" + (f"?version={version}" if version else ""))

    def health(self) -> dict:
        return self._request("GET", "/api/v1/health")
