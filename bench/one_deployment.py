"""The benchmark's one-deployment Serve baseline: one deployment, the same XGBoost artifact, the
same runtime, `@serve.batch`, no router, no validation beyond the shape: what the Python proxy
alone leaves of a model server. Deployed by bench/run.py as `bench.one_deployment:build`."""
from __future__ import annotations

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from registry import RegistryConfig
from runtimes import load
from runtimes.schema import LABELS


class OneXGBoost:
    def __init__(self, version: str):
        registry = RegistryConfig.from_env().open()
        self.runtime = load("xgboost", registry.pull("xgboost", registry.resolve("xgboost", version)), threads=1)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def predict(self, rows: list[list]) -> list[list[float]]:
        matrix = np.asarray([[np.nan if v is None else v for v in row] for row in rows], dtype=np.float32)
        return self.runtime.predict_proba(matrix).tolist()

    async def __call__(self, request: Request) -> JSONResponse:
        probabilities = await self.predict((await request.json())["features"])
        return JSONResponse({"prediction": LABELS[int(np.argmax(probabilities))], "probabilities": probabilities})


def build(args: dict):
    return serve.deployment(OneXGBoost).options(
        name="xgboost_only", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5}).bind(
        args.get("version", "stable"))
