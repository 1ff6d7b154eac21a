"""Who holds a store, and read-only snapshots of a store that a mirror is writing.

DuckDB lets one process open a database file for writing, and no other process open it at all
while it does (not even read-only; DuckDB docs, "Concurrency"). So:

- a writer leaves `<db>.owner.json` beside the file: its PID and what it is
  ("routecheck mirror, run R"). A second process that hits DuckDB's lock error reads it and says
  "the store is in use by PID N (routecheck mirror, run R)" instead of a lock traceback. The file
  is only believed when its PID is the one DuckDB names, so a stale file (SIGKILL) is harmless.
- a mirror also serves snapshots (`SnapshotService`, on 127.0.0.1, with a token kept in the
  owner file, which only its user can read): on request it checkpoints and copies the file while
  no batch is being written (under `BatchWriter.locked()`), and the reader opens the copy
  read-only. `runs`, `report`, `sql` and `gate` work during a mirror that way.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import re
import secrets
import socket
import socketserver
import subprocess
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ContextManager

import duckdb

SNAPSHOT_TIMEOUT_S = 60.0
_LOCK_PID = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


class StoreError(ValueError):
    """A store that cannot be opened or read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Owner:
    pid: int
    what: str
    started_at: str = ""
    snapshot_port: int | None = None
    snapshot_token: str | None = None


def owner_path(db: Path) -> Path:
    return db.with_name(db.name + ".owner.json")


def write_owner(db: Path, owner: Owner) -> None:
    """Atomically (re)write the owner file, readable by this user only (it holds the snapshot token)."""
    path = owner_path(db)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(owner.__dict__, f)
    os.replace(tmp, path)


def read_owner(db: Path) -> Owner | None:
    try:
        data = json.loads(owner_path(db).read_text())
        return Owner(pid=int(data["pid"]), what=str(data["what"]), started_at=str(data.get("started_at", "")),
                     snapshot_port=data.get("snapshot_port"), snapshot_token=data.get("snapshot_token"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def clear_owner(db: Path) -> None:
    """Remove the owner file if this process wrote it."""
    owner = read_owner(db)
    if owner is not None and owner.pid == os.getpid():
        with contextlib.suppress(OSError):
            owner_path(db).unlink()


def claim(db: Path, what: str) -> Owner:
    owner = Owner(pid=os.getpid(), what=what, started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    with contextlib.suppress(OSError):  # a read-only folder: the lock message just names the PID
        write_owner(db, owner)
    return owner


def is_lock_error(e: BaseException) -> bool:
    """DuckDB's "another process holds this file" (at open, or at commit for the WAL)."""
    return isinstance(e, duckdb.Error) and "Could not set lock on file" in str(e)


def holder(db: Path, e: BaseException) -> tuple[int | None, Owner | None, str]:
    """(PID, owner record if it is that PID's, description) of whoever holds the lock DuckDB reported."""
    m = _LOCK_PID.search(str(e))
    pid = int(m["pid"]) if m else None
    owner = read_owner(db)
    if owner is not None and pid is not None and owner.pid != pid:
        owner = None  # stale: left by a process that died without cleaning up
    what = owner.what if owner else (f"{Path(m['exe']).name}, not a routecheck mirror" if m else "another process")
    return pid, owner, what


def in_use_message(db: Path, e: BaseException) -> str:
    pid, _owner, what = holder(db, e)
    who = f"PID {pid}" if pid is not None else "another process"
    return f"{db}: the store is in use by {who} ({what}); wait for it to finish or use another --db"


# -- snapshots -------------------------------------------------------------------------------------

class SnapshotService:
    """Serves consistent copies of the store its process is writing (see the module docstring).

    `locked` is the writer's `BatchWriter.locked`: the copy is taken after a CHECKPOINT, with no
    batch being written, so it is a committed state of every table.
    """

    def __init__(self, db: Path, what: str, locked: Callable[[], ContextManager[duckdb.DuckDBPyConnection]]):
        self.db = Path(db)
        self.what = what
        self.locked = locked
        self.token = secrets.token_hex(16)
        self.snapshots = 0
        service = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.request.settimeout(SNAPSHOT_TIMEOUT_S)
                try:
                    request = json.loads(self.rfile.readline(65536))
                    if not hmac.compare_digest(str(request.get("token", "")), service.token):
                        raise PermissionError("bad token")
                    service.copy_to(Path(request["dest"]))
                    reply: dict[str, Any] = {"ok": True}
                except Exception as e:  # noqa: BLE001 - the reader gets the reason, the mirror goes on
                    reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def copy_to(self, dest: Path) -> None:
        # The copy runs in a child process: DuckDB holds its lock with fcntl, and POSIX drops a
        # process's fcntl locks on a file when that process closes *any* descriptor of it, so
        # copying from here (shutil.copyfile) would silently unlock the store for other writers.
        wal = self.db.with_name(self.db.name + ".wal")
        with self.locked() as con:
            con.execute("CHECKPOINT")
            files = [str(self.db)] + ([str(wal)] if wal.exists() else [])  # no WAL after a checkpoint, as a rule
            for src, to in zip(files, (dest, dest.with_name(dest.name + ".wal"))):
                done = subprocess.run(["cp", "--reflink=auto", src, str(to)], capture_output=True, text=True,
                                      timeout=SNAPSHOT_TIMEOUT_S)
                if done.returncode:
                    raise OSError(done.stderr.strip() or f"cp exited {done.returncode}")
        self.snapshots += 1

    def __enter__(self) -> "SnapshotService":
        self._server.server_bind()
        self._server.server_activate()
        self._thread = threading.Thread(target=self._server.serve_forever, name="routecheck-snapshots", daemon=True)
        self._thread.start()
        owner = read_owner(self.db)
        base = owner if owner is not None and owner.pid == os.getpid() else claim(self.db, self.what)
        with contextlib.suppress(OSError):
            write_owner(self.db, Owner(base.pid, base.what, base.started_at, self._server.server_address[1], self.token))
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        clear_owner(self.db)


def request_snapshot(owner: Owner, dest: Path, timeout_s: float = SNAPSHOT_TIMEOUT_S) -> None:
    """Ask the owner's SnapshotService for a copy of the store at `dest`; raises OSError on failure."""
    if not owner.snapshot_port or not owner.snapshot_token:
        raise OSError("it serves no snapshots")
    with socket.create_connection(("127.0.0.1", int(owner.snapshot_port)), timeout=timeout_s) as s:
        s.sendall(json.dumps({"token": owner.snapshot_token, "dest": str(dest)}).encode() + b"\n")
        with s.makefile("rb") as f:
            line = f.readline(65536)
    try:
        reply = json.loads(line)
    except ValueError:
        raise OSError("no answer from the snapshot service") from None
    if not reply.get("ok"):
        raise OSError(reply.get("error") or "snapshot failed")
