"""A local `mlflow server` on 127.0.0.1 (random free port) over a sqlite store in a tmp folder, for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` with file artifacts (no artifact proxy), so its store is also usable as
    `sqlite:///<db>` by a client without the server."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = root, port or free_port()
        self.db = root / "mlflow.db"
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 600) -> MlflowServer:
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.db}",
            "--no-serve-artifacts",
            "--default-artifact-root",
            (self.root / "mlruns").as_uri(),
            "--workers",
            "1",
        ]
        log = open(self.root / f"server-{self.port}.log", "ab")  # noqa: SIM115  (held by the server process)
        env = {**os.environ, "MLFLOW_TRACKING_URI": "", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env, start_new_session=True)
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(self.root / f'server-{self.port}.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"mlflow server on {self.uri} did not answer within {timeout} s")

    def kill(self) -> None:
        """SIGKILL the server's process group (uvicorn workers included)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
