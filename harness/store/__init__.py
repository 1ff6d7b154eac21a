"""The DuckDB store: every stage reads the previous stage's output from here, so any stage can be re-run alone.

    schema.py  tables (TABLES) and columns      writer.py  upsert, BatchWriter
    views.py   every derived figure (route summaries, server timings, metric deltas), defined once
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from harness.store.schema import ADDED_COLUMNS, SCHEMA_VERSION, TABLES, columns
from harness.store.views import VIEWS
from harness.store.writer import BatchWriter, to_json, upsert

DEFAULT_DB = Path("traces/routecheck.duckdb")

__all__ = ["DEFAULT_DB", "SCHEMA_VERSION", "TABLES", "BatchWriter", "columns", "connect", "ensure_schema", "to_json", "upsert"]


def connect(path: str | Path = DEFAULT_DB, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open (and if needed create) the store. Creates missing tables; never drops data."""
    path = Path(path)
    if read_only:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no routecheck store here (run `routecheck mirror` first or pass --db)")
        return duckdb.connect(str(path), read_only=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(path))
    ensure_schema(con)
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


