"""The peer server: MLServer with its XGBoost and scikit-learn runtimes, in a virtualenv of its
own (its pins clash with Ray's), serving the same XGBoost and Random Forest versions over V2 REST
with `predict_proba` outputs. The forest is exported to joblib, the format MLServer's sklearn
runtime loads, for the benchmark only (serving never reads pickles), and the booster is re-saved
through XGBClassifier, whose tag tells MLServer it may answer `predict_proba`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from .common import ROOT, progress

VENV = ROOT / "bench" / ".venv-mlserver"
# uvloop 0.21+ refuses asyncio.get_event_loop() without a running loop, which MLServer 1.7.1's
# inference-pool workers call at start: they die and the server shuts down.
PACKAGES = ["mlserver==1.7.1", "mlserver-xgboost==1.7.1", "mlserver-sklearn==1.7.1", "uvloop<0.21"]


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / "bin" / "mlserver").exists():
        progress(f"creating {VENV.relative_to(ROOT)} with {', '.join(PACKAGES)} (a few minutes, once)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        # The artifacts' own framework versions, so both servers load identical models.
        import sklearn
        import xgboost

        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PACKAGES, f"xgboost=={xgboost.__version__}",
                        f"scikit-learn=={sklearn.__version__}"], check=True)
    return VENV


def model_repository(registry, versions: dict[str, str]) -> Path:
    """xgboost/ (model.json as registered) and random_forest/ (the forest as joblib)."""
    import joblib

    from runtimes import load

    root = Path(tempfile.mkdtemp(prefix="kepler-mlserver-"))
    settings = {"xgboost": ("mlserver_xgboost.XGBoostModel", "model.json"),
                "random_forest": ("mlserver_sklearn.SKLearnModel", "model.joblib")}
    for name, (implementation, file_name) in settings.items():
        directory = root / name
        directory.mkdir()
        pulled = registry.pull(name, versions[name])
        if name == "xgboost":  # the same booster, saved with the classifier tag MLServer looks for
            import xgboost

            classifier = xgboost.XGBClassifier()
            classifier.load_model(pulled / "model.json")
            classifier.save_model(directory / file_name)
        else:
            joblib.dump(load(name, pulled, threads=1).model, directory / file_name)
        (directory / "model-settings.json").write_text(json.dumps(
            {"name": name, "implementation": implementation,
             "parameters": {"uri": f"./{file_name}", "version": versions[name]}}))
    return root


class MLServer:
    def __init__(self, repository: Path, http_port: int, grpc_port: int, metrics_port: int):
        self.repository, self.http_port = repository, http_port
        (repository / "settings.json").write_text(json.dumps(
            {"host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
             "debug": False}))
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 180) -> "MLServer":
        log = open(self.repository / "mlserver.log", "ab")
        self.process = subprocess.Popen([str(VENV / "bin" / "mlserver"), "start", str(self.repository)],
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        env={**os.environ, "PYTHONPATH": ""})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlserver exited; see {self.repository / 'mlserver.log'}")
            try:
                if all(requests.get(f"{self.url}/v2/models/{m}/ready", timeout=2).ok for m in ("xgboost", "random_forest")):
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise TimeoutError("mlserver did not become ready")

    def pids(self) -> list[int]:
        import psutil

        parent = psutil.Process(self.process.pid)
        return [parent.pid, *(child.pid for child in parent.children(recursive=True))]

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
