"""Shared fixtures: a real stub OpenAI server on 127.0.0.1, in its own process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

REPO = Path(__file__).resolve().parents[1]


class StubProcess:
    def __init__(self, config: dict[str, Any], tmp: Path, module: str = "harness.testing.stub_server"):
        cfg_path = tmp / f"stub-{id(self)}.json"
        cfg_path.write_text(json.dumps(config))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--port", "0", "--config", str(cfg_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        )
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"stub server did not start: {line}{self.proc.stdout.read()}")
        self.url = line.split("listening on ")[1].strip()
        self.base_url = self.url + "/v1"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def stub_server(tmp_path: Path) -> Iterator[Callable[..., StubProcess]]:
    """Factory: `stub_server(ttft_s=0.01, answer="x")` starts a stub with those StubConfig fields."""
    started: list[StubProcess] = []

    def start(**config: Any) -> StubProcess:
        stub = StubProcess(config, tmp_path)
        started.append(stub)
        return stub

    yield start
    for s in started:
        s.stop()


def write_routes(path: Path, routes: list[dict[str, Any]]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"routes": routes}, sort_keys=False))
    return path


def write_corpus(path: Path, rows: list[dict[str, Any]]) -> Path:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path
