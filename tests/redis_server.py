"""A real Redis (Debian's redis-server) on loopback, with a password and a memory limit, that the
tests can kill, stop (SIGSTOP) and bring back on the same port."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

PASSWORD = "test-redis-password"
MAX_MEMORY = "16mb"


class RedisServer:
    def __init__(self, tmp: Path, port: int):
        self.tmp, self.port = tmp, port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        from .conftest import wait_for_port

        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (.ci/run installs Debian's redis-server)")
        log = open(self.tmp / f"redis-{self.port}.log", "ab")
        self.process = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--requirepass", PASSWORD,
             "--save", "", "--appendonly", "no", "--dir", str(self.tmp), "--maxmemory", MAX_MEMORY,
             "--maxmemory-policy", "allkeys-lru"], stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, process=self.process)
        return self

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, password=PASSWORD, socket_timeout=5)

    def kill(self) -> None:
        self.cont()
        self.process.kill()
        self.process.wait(10)

    def pause(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def cont(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def ensure_running(self) -> None:
        """After a fault: running and answering, on the same port, empty if it was restarted."""
        if self.process is None or self.process.poll() is not None:
            self.start()
        self.cont()
        self.client().ping()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.cont()
            self.process.terminate()
            self.process.wait(10)
