"""`routecheck proxy` in its own process, for tests and benchmarks: started on a free port, stopped
with SIGTERM (the graceful path) or SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence


class ProxyProcess:
    def __init__(self, routes: Path, db: Path, args: Sequence[str] = (), env: dict[str, str] | None = None,
                 cwd: Path | None = None, start_timeout_s: float = 120.0, cpu: int | None = None):
        cmd = [sys.executable, "-m", "harness.cli", "proxy", "--routes", str(routes), "--db", str(db),
               "--listen", "127.0.0.1:0", *args]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                                     env={**os.environ, **(env or {})})
        self.lines: list[str] = []
        self.url = ""
        deadline = time.monotonic() + start_timeout_s
        ready = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:
                self.lines.append(line)
                if "proxy listening on " in line and not self.url:
                    self.url = line.split("proxy listening on ")[1].split()[0]
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        ready.wait(max(0.0, deadline - time.monotonic()))
        if not self.url:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError("proxy did not start:\n" + "".join(self.lines))
        self.base_url = self.url + "/v1"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 120.0) -> int:
        """Signal the proxy and wait for it to exit; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(timeout=5)
        return code
