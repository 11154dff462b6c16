"""Start a real `itamae serve` in a subprocess on a free loopback port, for API tests.

with ServeProcess("--model", path, "--engine", "torch") as server:
    openai.OpenAI(base_url=server.url, api_key="none")
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def itamae_command(*args: str) -> list[str]:
    # `python -m app.cli` is what the installed `itamae` script runs, without needing
    # the package installed in the test environment.
    return [sys.executable, "-m", "app.cli", *args]


def serve_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class ServeProcess:
    """`itamae serve ... --port 0 --json`; `url` is its /v1 root once the model is ready."""

    def __init__(self, *args: str, ready_timeout: float = 180.0, api_key: str | None = None):
        self.args = [*args, "--port", "0", "--json"]
        if api_key:
            self.args += ["--api-key", api_key]
        self.api_key = api_key
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen | None = None
        # stderr to a file, not a pipe: nobody reads it while the server runs, and a full
        # pipe would block the server.
        self.stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed by stop())
        self.url = ""
        self.root = ""
        self.model_id = ""

    def __enter__(self) -> ServeProcess:
        self.proc = subprocess.Popen(
            itamae_command("serve", *self.args),
            cwd=REPO,
            env=serve_env(),
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        try:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"itamae serve did not start:\n{self.log()}")
            self.url = json.loads(line)["url"]
            self.root = self.url.removesuffix("/v1")
            self.model_id = self._wait_for_model()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _wait_for_model(self) -> str:
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"itamae serve exited:\n{self.log()}")
            try:
                models = httpx.get(self.url + "/models", headers=self.headers, timeout=5).json()
            except httpx.HTTPError:
                models = {}
            if models.get("data"):
                return models["data"][0]["id"]
            time.sleep(0.2)
        raise TimeoutError(f"the model was not ready within {self.ready_timeout} s")

    def log(self) -> str:
        """What the server wrote to stderr so far."""
        if self.stderr.closed:
            return ""
        self.stderr.flush()
        self.stderr.seek(0)
        return self.stderr.read()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
