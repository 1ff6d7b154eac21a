"""The DuckDB store: one file holds runs, prompts, spans, responses, scores and server metrics.

Every stage reads the previous stage's output from here, so any stage can be re-run alone.
Writers append in batches inside transactions; a committed batch survives SIGKILL (DuckDB WAL).
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import duckdb
import pyarrow as pa

DEFAULT_DB = Path("traces/routecheck.duckdb")

SCHEMA_VERSION = 1

# Column lists double as the insert order for the batch writers below.
TABLES: dict[str, str] = {
    "runs": """
        run_id          VARCHAR PRIMARY KEY,
        started_at      TIMESTAMPTZ,
        finished_at     TIMESTAMPTZ,
        status          VARCHAR,      -- running | completed | failed | interrupted
        corpus_path     VARCHAR,
        corpus_sha256   VARCHAR,
        routes          JSON,         -- routes snapshot, secrets removed
        options         JSON,         -- CLI options of the run (samples, limit, cohorts, ...)
        tool_version    VARCHAR,
        n_prompts       BIGINT,
        n_expected      BIGINT,       -- prompts x routes x samples
        note            VARCHAR
    """,
    "prompts": """
        run_id          VARCHAR,
        prompt_id       VARCHAR,
        cohort          VARCHAR,
        messages        JSON,
        context         VARCHAR,
        tools           JSON,
        expected        JSON,
        metadata        JSON,
        source_line     BIGINT,
        PRIMARY KEY (run_id, prompt_id)
    """,
    "responses": """
        run_id          VARCHAR,
        prompt_id       VARCHAR,
        route           VARCHAR,
        sample          INTEGER,
        role            VARCHAR,      -- baseline | candidate
        cohort          VARCHAR,
        model           VARCHAR,      -- gen_ai.request.model
        response_model  VARCHAR,      -- gen_ai.response.model
        response_id     VARCHAR,
        text            VARCHAR,
        tool_calls      JSON,         -- OpenAI tool_calls list, arguments kept as strings
        finish_reason   VARCHAR,
        input_tokens    BIGINT,
        output_tokens   BIGINT,
        total_tokens    BIGINT,
        usage_source    VARCHAR,      -- server | counted
        started_at      TIMESTAMPTZ,
        latency_s       DOUBLE,       -- end to end, first byte sent to last byte received
        ttft_s          DOUBLE,       -- time to first content or tool-call token
        itl_mean_s      DOUBLE,       -- mean inter-token (inter-chunk) latency
        itl_p99_s       DOUBLE,
        attempts        INTEGER,
        http_status     INTEGER,
        error_type      VARCHAR,      -- NULL when the call succeeded
        error_message   VARCHAR,
        timed_out       BOOLEAN,
        trace_id        VARCHAR,
        span_id         VARCHAR,
        PRIMARY KEY (run_id, prompt_id, route, sample)
    """,
    "spans": """
        trace_id        VARCHAR,
        span_id         VARCHAR,
        parent_span_id  VARCHAR,
        name            VARCHAR,
        kind            VARCHAR,
        service_name    VARCHAR,      -- routecheck for client spans, the server's for received spans
        start_time      TIMESTAMPTZ,
        end_time        TIMESTAMPTZ,
        duration_s      DOUBLE,
        status_code     VARCHAR,      -- UNSET | OK | ERROR
        status_message  VARCHAR,
        attributes      JSON,
        run_id          VARCHAR,
        route           VARCHAR,
        prompt_id       VARCHAR,
        cohort          VARCHAR,
        sample          INTEGER,
        input_tokens    BIGINT,
        output_tokens   BIGINT,
        ttft_s          DOUBLE,
        error_type      VARCHAR,
        PRIMARY KEY (trace_id, span_id)
    """,
    "scores": """
        run_id            VARCHAR,
        prompt_id         VARCHAR,
        route             VARCHAR,
        sample            INTEGER,
        evaluator         VARCHAR,
        score             DOUBLE,     -- in [0, 1]; NULL when not applicable
        passed            BOOLEAN,    -- NULL when not applicable
        applicable        BOOLEAN,
        reason            VARCHAR,
        details           JSON,
        evaluator_version VARCHAR,
        scored_at         TIMESTAMPTZ,
        PRIMARY KEY (run_id, prompt_id, route, sample, evaluator)
    """,
    "server_metrics": """
        run_id          VARCHAR,
        route           VARCHAR,
        scraped_at      TIMESTAMPTZ,
        phase           VARCHAR,      -- before | during | after
        metric          VARCHAR,      -- Prometheus sample name, e.g. vllm:prompt_tokens_total
        labels          JSON,
        value           DOUBLE
    """,
}


# Client timing beside the server's own view of the same request (vLLM's `llm_request` span,
# a child of the call span through the traceparent header). NULL where no server span arrived.
RESPONSE_TIMINGS_SQL = """
SELECT r.run_id, r.prompt_id, r.route, r.sample, r.cohort,
       r.latency_s, r.ttft_s,
       TRY_CAST(json_extract_string(s.attributes, '$."gen_ai.latency.time_in_queue"') AS DOUBLE)         AS server_queue_s,
       TRY_CAST(json_extract_string(s.attributes, '$."gen_ai.latency.time_in_model_prefill"') AS DOUBLE) AS server_prefill_s,
       TRY_CAST(json_extract_string(s.attributes, '$."gen_ai.latency.time_in_model_decode"') AS DOUBLE)  AS server_decode_s,
       TRY_CAST(json_extract_string(s.attributes, '$."gen_ai.latency.time_to_first_token"') AS DOUBLE)   AS server_ttft_s,
       TRY_CAST(json_extract_string(s.attributes, '$."gen_ai.latency.e2e"') AS DOUBLE)                   AS server_e2e_s
FROM responses r
LEFT JOIN spans s ON s.trace_id = r.trace_id AND s.parent_span_id = r.span_id AND s.name = 'llm_request'
"""
RESPONSE_TIMINGS_VIEW = f"CREATE OR REPLACE VIEW response_timings AS {RESPONSE_TIMINGS_SQL}"


def columns(table: str) -> list[str]:
    """Column names of a table, in declaration order."""
    cols = []
    for line in TABLES[table].splitlines():
        line = line.split("--")[0].strip()
        if not line or line.upper().startswith("PRIMARY KEY"):
            continue
        cols.append(line.split()[0])
    return cols


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
    for name, body in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({body})")
    con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
    con.execute(RESPONSE_TIMINGS_VIEW)
    con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])


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
    json_cols = _json_columns(table)
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


@functools.cache
def _json_columns(table: str) -> frozenset[str]:
    cols = set()
    for line in TABLES[table].splitlines():
        parts = line.split("--")[0].split()
        if len(parts) >= 2 and parts[1].rstrip(",") == "JSON":
            cols.add(parts[0])
    return frozenset(cols)


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

    @contextlib.contextmanager
    def locked(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The shared connection, with no flush running until the block ends."""
        with self._write_lock:
            yield self._con
