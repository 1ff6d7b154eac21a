"""The DuckDB store: every stage reads the previous stage's output from here, so any stage can be re-run alone.

    schema.py  tables (TABLES) and columns      writer.py  upsert, BatchWriter
    views.py   every derived figure (route summaries, server timings, metric deltas), defined once
    lock.py    who holds the store (the owner file), snapshots for readers while a mirror writes

Opening a store never ends in a DuckDB traceback: a missing, foreign, damaged or busy file is a
StoreError whose one-line message names the file and what is wrong.
"""

from __future__ import annotations

import atexit
import contextlib
import shutil
import tempfile
from pathlib import Path

import duckdb

from harness.store.lock import (
    SnapshotService, StoreError, claim, clear_owner, holder, in_use_message, is_lock_error, request_snapshot,
)
from harness.store.schema import ADDED_COLUMNS, SCHEMA_VERSION, TABLES, columns
from harness.store.views import VIEWS
from harness.store.writer import BatchWriter, to_json, upsert

DEFAULT_DB = Path("traces/routecheck.duckdb")

__all__ = ["DEFAULT_DB", "SCHEMA_VERSION", "TABLES", "BatchWriter", "SnapshotService", "StoreError", "columns", "connect",
           "ensure_schema", "error_message", "shared", "to_json", "upsert"]


def connect(path: str | Path = DEFAULT_DB, read_only: bool = False, owner: str | None = None) -> duckdb.DuckDBPyConnection:
    """Open (and if needed create) the store. Creates missing tables; never drops data.

    Read-only on a store a mirror is writing: a snapshot of it (lock.py). For writing, `owner`
    ("routecheck mirror, run R") is what a second process is told holds the store.
    """
    path = Path(path)
    if read_only:
        if path.is_dir():
            raise StoreError(f"{path}: is a directory; --db takes the store's file (e.g. traces/routecheck.duckdb)")
        if not path.exists():
            raise StoreError(f"{path}: no routecheck store here (run `routecheck mirror` first or pass --db)")
        try:
            con = duckdb.connect(str(path), read_only=True)
        except duckdb.Error as e:
            con = _snapshot(path, e) if is_lock_error(e) else _raise_open_error(path, e)
        _check_store(con, path, read_only=True)
        return con
    if path.is_dir():
        raise StoreError(f"{path}: is a directory; --db takes the store's file (e.g. traces/routecheck.duckdb)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocker = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else e.strerror
        raise StoreError(f"{path}: cannot create the store's folder {path.parent}: {why}") from None
    try:
        con = duckdb.connect(str(path))
    except duckdb.Error as e:
        if is_lock_error(e):
            raise StoreError(in_use_message(path, e)) from None
        _raise_open_error(path, e)
    try:
        _check_store(con, path, read_only=False)
        ensure_schema(con)
    except duckdb.Error as e:
        con.close()
        raise StoreError(error_message(path, e)) from None
    except StoreError:
        con.close()
        raise
    if owner:
        claim(path, owner)
        atexit.register(clear_owner, path)
    return con


@contextlib.contextmanager
def shared(path: str | Path, writer: BatchWriter, owner: str):
    """While the block runs, other processes can read snapshots of the store `writer` writes."""
    with SnapshotService(Path(path), owner, writer.locked) as service:
        yield service


def error_message(path: str | Path, e: BaseException) -> str:
    """One line for a DuckDB error met while reading a store."""
    if is_lock_error(e):
        return in_use_message(Path(path), e)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{path}: the store cannot be read ({first}); it may be damaged: restore it, or point --db at another store"


def _raise_open_error(path: Path, e: BaseException):
    text = str(e)
    if "not a valid DuckDB database file" in text:
        raise StoreError(f"{path}: not a DuckDB database file (--db takes a routecheck store, e.g. traces/routecheck.duckdb)") from None
    if "Is a directory" in text:
        raise StoreError(f"{path}: is a directory; --db takes the store's file") from None
    if "database does not exist" in text:
        raise StoreError(f"{path}: no routecheck store here (run `routecheck mirror` first or pass --db)") from None
    if "newer version" in text or "older version" in text or "storage version" in text.lower():
        first = text.strip().splitlines()[0]
        raise StoreError(f"{path}: written by another DuckDB version ({first})") from None
    raise StoreError(error_message(path, e)) from None


def _check_store(con: duckdb.DuckDBPyConnection, path: Path, read_only: bool) -> None:
    """A DuckDB file that is not a routecheck store, or one from a newer routecheck, is refused."""
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
        if "runs" not in tables and (read_only or tables):
            con.close()
            raise StoreError(f"{path}: a DuckDB file, but not a routecheck store (no 'runs' table)")
        if "meta" in tables:
            row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            version = int(row[0]) if row and str(row[0]).isdigit() else None
            if version is not None and version > SCHEMA_VERSION:
                con.close()
                raise StoreError(f"{path}: written by a newer routecheck (store schema {version}, this one reads up to "
                                 f"{SCHEMA_VERSION}); upgrade routecheck")
        if read_only:
            con.execute("SELECT count(*) FROM runs").fetchone()
    except duckdb.Error as e:
        con.close()
        raise StoreError(error_message(path, e)) from None


_snapshot_dirs: list[str] = []


def _snapshot(path: Path, lock_error: BaseException) -> duckdb.DuckDBPyConnection:
    """A read-only connection to a fresh snapshot of a store that a routecheck mirror is writing."""
    pid, owner, _what = holder(path, lock_error)
    if owner is None or not owner.snapshot_port:
        raise StoreError(in_use_message(path, lock_error))
    folder = tempfile.mkdtemp(prefix="routecheck-snapshot-")
    if not _snapshot_dirs:
        atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _snapshot_dirs])
    _snapshot_dirs.append(folder)
    dest = Path(folder) / path.name
    try:
        request_snapshot(owner, dest)
        con = duckdb.connect(str(dest), read_only=True)
    except (OSError, duckdb.Error) as e:
        raise StoreError(f"{in_use_message(path, lock_error)}; and its snapshot failed: {e}") from None
    for f in (dest, dest.with_name(dest.name + ".wal")):
        with contextlib.suppress(OSError):  # the open connection keeps the data; the disk space is freed on close
            f.unlink()
    return con


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create what is missing (tables, columns added since, views); never drops data."""
    for name, body in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({body})")
    for table, cols in ADDED_COLUMNS.items():
        for col, sql_type in cols:
            con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {col} {sql_type}")
    con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    for name, sql in VIEWS.items():
        con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
    con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
