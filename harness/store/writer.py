"""Writing to the store: keyed batch upserts, and the buffered writer the run's threads share.

Writers append in batches inside transactions; a committed batch survives SIGKILL (DuckDB WAL).
Rows are checked against the schema first (validate.py): a bad value costs its row (an error row
for `responses`), never the batch. Should the database still refuse a batch, it is split until
the refused rows are found and stored in a minimal form. When the store itself fails (disk, I/O,
a broken connection), `StoreWriteError` says so; the BatchWriter keeps it in `failure` so the run
stops with a clear error instead of going on without storing anything.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import duckdb
import pyarrow as pa

from harness.store.redact import Redactor
from harness.store.schema import TABLES, columns, json_columns
from harness.store.validate import Problems, clean_rows, minimal_row

# The database refused these rows (a value it cannot take); anything else means the store failed.
ROW_ERRORS: tuple[type[BaseException], ...] = (
    duckdb.ConversionException, duckdb.InvalidInputException, duckdb.ConstraintException, duckdb.TypeMismatchException,
    duckdb.OutOfRangeException, pa.ArrowException, OverflowError, UnicodeError, TypeError, ValueError,
)


class StoreWriteError(RuntimeError):
    """The store could not take a batch: the run must stop (what was written before is kept)."""

    def __init__(self, table: str, rows: int, cause: BaseException):
        super().__init__(f"could not write {rows} {table} rows to the store: {type(cause).__name__}: {cause}")
        self.table, self.rows, self.cause = table, rows, cause


def to_json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[dict[str, Any]]) -> None:
    """One transaction: the rows as one Arrow table (executemany binds row by row, milliseconds each).

    A keyed table is written with a plain INSERT first and INSERT OR REPLACE only when a key is
    already there (a resumed call, a restored span): the replace costs about twice the insert per
    statement (docs/benchmarks.md), and nearly every batch holds new keys only. Same rows either way.
    """
    cols = columns(table)
    json_cols = json_columns(table)
    data = {}
    for c in cols:
        values = [r.get(c) for r in rows]
        if c in json_cols:
            values = [v if v is None or isinstance(v, str) else to_json(v) for v in values]
        data[c] = values
    batch = pa.table(data)
    keyed = "PRIMARY KEY" in TABLES[table]
    names = ", ".join(cols)
    con.register("_routecheck_batch", batch)
    try:
        for verb in ("INSERT", "INSERT OR REPLACE") if keyed else ("INSERT",):
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(f"{verb} INTO {table} ({names}) SELECT {names} FROM _routecheck_batch")
                con.execute("COMMIT")
                return
            except duckdb.ConstraintException:
                with contextlib.suppress(Exception):
                    con.execute("ROLLBACK")
                if verb != "INSERT" or not keyed:
                    raise
            except BaseException:
                with contextlib.suppress(Exception):
                    con.execute("ROLLBACK")
                raise
    finally:
        with contextlib.suppress(Exception):
            con.unregister("_routecheck_batch")


def upsert(con: duckdb.DuckDBPyConnection, table: str, rows: Sequence[dict[str, Any]],
           redactor: Redactor | None = None, problems: Problems | None = None) -> int:
    """Insert rows (dicts keyed by column name); rows with an existing key replace it. Returns rows written.

    Missing keys are NULL; JSON columns accept Python objects. Raises StoreWriteError when the
    store fails; a row it refuses is stored in its minimal form (key and reason) and noted in `problems`.
    """
    if not rows:
        return 0
    problems = problems if problems is not None else Problems()
    before = problems.written
    rows = clean_rows(table, rows, redactor, problems)
    _write(con, table, rows, problems, redactor)
    return problems.written - before


def _write(con: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]], problems: Problems,
           redactor: Redactor | None) -> None:
    if not rows:
        return
    try:
        _insert(con, table, rows)
        problems.written += len(rows)
    except ROW_ERRORS as e:
        if len(rows) > 1:  # find the refused rows: halves, recursively
            mid = len(rows) // 2
            _write(con, table, rows[:mid], problems, redactor)
            _write(con, table, rows[mid:], problems, redactor)
            return
        reason = f"{type(e).__name__}: {e}"[:500]
        reason = redactor.text(reason) if redactor else reason
        problems.note(f"{table} row refused by the database ({reason})")
        # The minimal form keeps a few identifying columns; should one of them be what was refused
        # (text DuckDB cannot cast, say), the bare form keeps the key and the reason only.
        for bare in (False, True):
            fallback = minimal_row(table, rows[0], reason, bare=bare)
            if fallback is None:
                break
            try:
                _insert(con, table, [fallback])
            except ROW_ERRORS:
                continue
            except Exception as e2:
                raise StoreWriteError(table, 1, e2) from e2
            problems.repaired += 1
            problems.written += 1
            return
        problems.rejected += 1
    except Exception as e:
        raise StoreWriteError(table, len(rows), e) from e


@dataclass
class WriteStats:
    written: dict[str, int] = field(default_factory=dict)  # table -> rows written
    repaired: dict[str, int] = field(default_factory=dict)  # rows stored with a value set to NULL (or minimal)
    rejected: dict[str, int] = field(default_factory=dict)  # rows not stored (their key could not be)
    lost: dict[str, int] = field(default_factory=dict)  # rows not written because the store failed
    examples: list[str] = field(default_factory=list)


class BatchWriter:
    """Buffers rows per table and writes them in one transaction per table; thread-safe.

    The runner (responses, prompts) and the span exporter (spans) share one writer, so both reach
    the file through one database instance. Adding never waits for a write in progress. Flushes
    write through their own cursor of the owner's connection: DuckDB refuses, rather than queues,
    a call on a connection that another thread left busy (a half-fetched `fetchone()` is enough),
    and a refused span batch was lost to the receiver's 503. Use `locked()` to keep flushes out
    of a block (a consistent snapshot, a multi-statement transaction).

    A store failure is kept in `failure` (the first one) and raised from that flush; later flushes
    still try every table, so what can be written is. `stats` counts rows written, repaired,
    rejected and lost per table.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, redactor: Redactor | None = None):
        self._con = con
        try:
            self._write_con = con.cursor()  # closed with `con`
        except duckdb.Error:  # a closed connection: each flush fails and says so
            self._write_con = con
        self._buf_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._buf: dict[str, list[dict[str, Any]]] = {}
        self.redactor = redactor
        self.stats = WriteStats()
        self.failure: StoreWriteError | None = None

    @property
    def written(self) -> dict[str, int]:
        return self.stats.written

    def add(self, table: str, rows: Iterable[dict[str, Any]]) -> None:
        """Buffer rows until the next flush (the runner flushes every second, exporters per batch)."""
        with self._buf_lock:
            self._buf.setdefault(table, []).extend(rows)

    def flush(self) -> None:
        with self._write_lock:
            with self._buf_lock:
                pending, self._buf = self._buf, {}
            error: StoreWriteError | None = None
            for table, rows in pending.items():
                problems = Problems()
                try:
                    upsert(self._write_con, table, rows, self.redactor, problems)
                except StoreWriteError as e:
                    error = error or e
                    unwritten = len(rows) - problems.written - problems.rejected
                    self.stats.lost[table] = self.stats.lost.get(table, 0) + unwritten
                s = self.stats
                s.written[table] = s.written.get(table, 0) + problems.written
                if problems.repaired:
                    s.repaired[table] = s.repaired.get(table, 0) + problems.repaired
                if problems.rejected:
                    s.rejected[table] = s.rejected.get(table, 0) + problems.rejected
                s.examples.extend(problems.examples[: max(0, 20 - len(s.examples))])
            if error is not None:
                self.failure = self.failure or error
                raise error

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The connection itself, for its owner (opening and closing it); others use `locked()`."""
        return self._con

    @contextlib.contextmanager
    def locked(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The shared connection, with no flush running until the block ends."""
        with self._write_lock:
            yield self._con
