"""Writing to the store: keyed batch upserts, and the buffered writer the run's threads share.

Writers append in batches inside transactions; a committed batch survives SIGKILL (DuckDB WAL).
"""

from __future__ import annotations

import contextlib
import json
import threading
from typing import Any, Iterable, Iterator, Sequence

import duckdb
import pyarrow as pa

from harness.store.schema import TABLES, columns, json_columns


def to_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def upsert(con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows (dicts keyed by column name) in one transaction; rows with an existing key replace it.

    Missing keys are NULL; JSON columns accept Python objects. Rows go in as one Arrow table:
    DuckDB's executemany binds row by row and costs milliseconds per row.
    """
    if not rows:
        return 0
    cols = columns(table)
    json_cols = json_columns(table)
    data = {}
    for c in cols:
        values = [r.get(c) for r in rows]
        if c in json_cols:
            values = [v if v is None or isinstance(v, str) else to_json(v) for v in values]
        data[c] = values
    batch = pa.table(data)
    verb = "INSERT OR REPLACE" if "PRIMARY KEY" in TABLES[table] else "INSERT"
    con.execute("BEGIN TRANSACTION")
    try:
        con.register("_routecheck_batch", batch)
        con.execute(f"{verb} INTO {table} ({', '.join(cols)}) SELECT {', '.join(cols)} FROM _routecheck_batch")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    finally:
        con.unregister("_routecheck_batch")
    return len(rows)


class BatchWriter:
    """Buffers rows per table and writes them in one transaction per table; thread-safe.

    The runner (responses, prompts) and the span exporter (spans) share one writer, so both reach
    the file through one connection. Adding never waits for a write in progress. Any other use of
    that connection while writers may flush goes through `locked()`: DuckDB refuses, rather than
    queues, a call on a connection that is busy in another thread.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self._con = con
        self._buf_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._buf: dict[str, list[dict[str, Any]]] = {}
        self.written: dict[str, int] = {}

    def add(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        """Buffer rows until the next flush (the runner flushes every second, exporters per batch)."""
        with self._buf_lock:
            self._buf.setdefault(table, []).extend(rows)

    def flush(self) -> None:
        with self._write_lock:
            with self._buf_lock:
                pending, self._buf = self._buf, {}
            for table, rows in pending.items():
                n = upsert(self._con, table, rows)
                self.written[table] = self.written.get(table, 0) + n

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The connection itself, for its owner (opening and closing it); others use `locked()`."""
        return self._con

    @contextlib.contextmanager
    def locked(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The shared connection, with no flush running until the block ends."""
        with self._write_lock:
            yield self._con
