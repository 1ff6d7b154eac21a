"""The store write can't fail silently (issue 18): real DuckDB files, the real stub server, real CLI runs.

1. Row validation (harness/store/validate.py) and the BatchWriter: each kind of value a column
   cannot take is NULL (or repaired) in a stored row, a `responses` row says `invalid_row` and
   names the column, the writer's stats count it; one bad row in a batch of 100 costs that row only.
2. A store failing mid-run stops the run: exit 3, one line "N of M responses were written" and
   the --resume line, no traceback; `--resume` then finishes with every call exactly once.
3. Call spans restored (harness/mirror/restore.py) after SIGKILL + --resume and at a normal end.
4. API keys redacted from every stored table and every report output.
5. Hypothesis: random SSE byte streams served by a real local server end in one row per call.
"""

from __future__ import annotations

import datetime as dt
import math

import duckdb
import pytest

from harness.store import BatchWriter, connect
from harness.store.redact import Redactor
from harness.store.validate import Problems, clean_rows
from harness.store.writer import StoreWriteError, upsert

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 1, 1, tzinfo=UTC)


def _response(i: int, **extra) -> dict:
    return {"run_id": "r", "prompt_id": f"p{i:03d}", "route": "a", "sample": 0, "role": "baseline", "text": f"answer {i}",
            "input_tokens": 3, "output_tokens": 2, "latency_s": 0.5, "started_at": T0, "attempts": 1, **extra}


def _rows(con, sql: str, *params) -> list[dict]:
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


@pytest.fixture
def con(tmp_path):
    c = connect(tmp_path / "s.duckdb")
    yield c
    c.close()


# -- 1. values a column cannot take ------------------------------------------------------------------

# (column, value sent, value stored, the message names) per kind of bad value and column type
BAD_VALUES = {
    "int beyond BIGINT": ("input_tokens", 2**70, None, "input_tokens: 1180591620717411303424 is out of range for BIGINT"),
    "negative beyond BIGINT": ("output_tokens", -(2**63) - 1, None, "out of range for BIGINT"),
    "int beyond INTEGER": ("attempts", 2**31, None, "attempts: 2147483648 is out of range for INTEGER"),
    "float too big for BIGINT": ("total_tokens", 1e30, None, "total_tokens: 1000000000000000019884624838656 is out of range"),
    "fractional float in INTEGER": ("http_status", 200.5, None, "http_status: float 200.5 is not an integer"),
    "text in INTEGER": ("sample", "0", None, "sample: str '0' is not an integer"),  # sample is a key: see below
    "text in DOUBLE": ("latency_s", "fast", None, "latency_s: str 'fast' is not a number"),
    "bool in DOUBLE": ("ttft_s", True, None, "ttft_s: bool True is not a number"),
    "int beyond DOUBLE": ("itl_mean_s", 10**400, None, "out of range for DOUBLE"),
    "object in VARCHAR": ("text", {"a": [1, 2]}, None, "text: dict {'a': [1, 2]} is not text"),
    "list in VARCHAR": ("finish_reason", ["stop"], None, "finish_reason: list ['stop'] is not text"),
    "lone surrogate in VARCHAR": ("text", "ok \ud800 ok", "ok \ufffd ok", "text: unpaired UTF-16 surrogates replaced by U+FFFD"),
    "lone surrogate in JSON": ("tool_calls", [{"name": "f\udc00"}], '[{"name": "f\ufffd"}]', "tool_calls: unpaired"),
    "circular JSON": ("tool_calls", "CIRCULAR", None, "tool_calls: list [[...]] cannot be written as JSON"),
    "text in BOOLEAN": ("timed_out", "yes", None, "timed_out: str 'yes' is not a boolean"),
    "int in TIMESTAMPTZ": ("started_at", 1767225600, None, "started_at: int 1767225600 is not a timestamp"),
    "bad text in TIMESTAMPTZ": ("started_at", "yesterday", None, "started_at: str 'yesterday' is not an ISO timestamp"),
    "text in VARCHAR[]": ("flags", "partial", None, "flags: str 'partial' is not a list"),
    "object in VARCHAR[]": ("flags", ["ok", {"x": 1}], None, "flags: dict {'x': 1} is not text"),
}


@pytest.mark.parametrize("kind", [k for k in BAD_VALUES if k != "text in INTEGER"])
def test_a_bad_value_is_null_and_the_response_an_invalid_row_naming_the_column(con, kind):
    column, sent, stored, message = BAD_VALUES[kind]
    if sent == "CIRCULAR":
        sent = []
        sent.append(sent)
    writer = BatchWriter(con)
    writer.add("responses", [_response(i) for i in range(5)] + [_response(5, **{column: sent})])
    writer.flush()
    assert writer.stats.written == {"responses": 6}
    assert writer.stats.repaired == {"responses": 1} and writer.stats.rejected == {} and writer.stats.lost == {}
    assert len(writer.stats.examples) == 1 and message in writer.stats.examples[0]
    [bad] = _rows(con, "SELECT * FROM responses WHERE prompt_id = 'p005'")
    assert bad[column] == stored
    assert bad["error_type"] == "invalid_row"
    assert bad["error_message"].startswith("not stored as sent: ") and message in bad["error_message"]
    # the rest of the row is kept as sent
    assert (bad["role"], bad["attempts" if column != "attempts" else "role"]) == ("baseline", 1 if column != "attempts" else "baseline")
    others = _rows(con, "SELECT * FROM responses WHERE prompt_id <> 'p005' ORDER BY prompt_id")
    assert [(r["error_type"], r["text"], r["input_tokens"], r["started_at"]) for r in others] == [
        (None, f"answer {i}", 3, T0) for i in range(5)]


def test_a_failed_call_keeps_its_error_type_and_gains_the_note(con):
    upsert(con, "responses", [_response(0, error_type="http_500", error_message="boom", output_tokens=2**64)])
    [row] = _rows(con, "SELECT error_type, error_message, output_tokens FROM responses")
    assert row["error_type"] == "http_500" and row["output_tokens"] is None
    assert row["error_message"].startswith("boom; not stored as sent: output_tokens: ")


def test_values_converted_without_loss_are_not_problems(con):
    """Numbers as text, integral floats as integers, ISO text as a timestamp, NaN/inf in DOUBLE
    (DuckDB stores them), a split surrogate pair joined: stored as values, nothing marked."""
    p = Problems()
    upsert(con, "responses", [_response(0, response_id=12345, model=7.5, attempts=2.0, started_at="2026-01-01T00:00:00Z",
                                        latency_s=math.inf, ttft_s=math.nan, text="\ud83d\ude00", flags=("a", "b"))], problems=p)
    assert (p.written, p.repaired, p.rejected) == (1, 0, 0)
    [row] = _rows(con, "SELECT * FROM responses")
    assert (row["response_id"], row["model"], row["attempts"], row["started_at"]) == ("12345", "7.5", 2, T0)
    assert row["latency_s"] == math.inf and math.isnan(row["ttft_s"])
    assert row["text"] == "\U0001F600" and row["flags"] == ["a", "b"] and row["error_type"] is None


def test_a_row_whose_key_cannot_be_stored_is_dropped_and_counted(con):
    writer = BatchWriter(con)
    writer.add("responses", [_response(0), _response(1, prompt_id={"id": 1}), _response(2, sample="0"), _response(3)])
    writer.flush()
    assert writer.stats.written == {"responses": 2} and writer.stats.rejected == {"responses": 2}
    assert all("row dropped (its key cannot be stored)" in e for e in writer.stats.examples)
    assert con.execute("SELECT list(prompt_id ORDER BY prompt_id) FROM responses").fetchone()[0] == ["p000", "p003"]


def test_a_key_with_a_lone_surrogate_is_repaired_and_kept(con):
    p = Problems()
    upsert(con, "responses", [_response(0, prompt_id="p\udfff")], problems=p)
    assert (p.written, p.repaired, p.rejected) == (1, 1, 0)
    assert con.execute("SELECT prompt_id, error_type FROM responses").fetchall() == [("p\ufffd", "invalid_row")]


def test_other_tables_keep_the_row_with_null_there(con):
    writer = BatchWriter(con)
    writer.add("scores", [{"run_id": "r", "prompt_id": "p", "route": "a", "sample": 0, "evaluator": "e", "score": "high",
                           "passed": True, "details": {"n": 1}}])
    writer.add("spans", [{"trace_id": "t" * 32, "span_id": "s" * 16, "name": "chat m", "input_tokens": 2**64, "attributes": "{}"}])
    writer.flush()
    assert writer.stats.written == {"scores": 1, "spans": 1} and writer.stats.repaired == {"scores": 1, "spans": 1}
    assert con.execute("SELECT score, passed, details FROM scores").fetchone() == (None, True, '{"n": 1}')
    span = _rows(con, "SELECT input_tokens, status_message FROM spans")[0]
    assert span["input_tokens"] is None and "input_tokens: 18446744073709551616 is out of range" in span["status_message"]


def test_one_bad_row_among_100_keeps_the_other_99(con):
    """The issue's original bug: one numeric id or token count beyond the range lost 16 rows."""
    rows = [_response(i, response_id=f"chatcmpl-{i}") for i in range(100)]
    rows[41]["output_tokens"] = 2**64
    rows[77]["response_id"] = 77  # a numeric id: coerced to text, not a problem
    writer = BatchWriter(con)
    writer.add("responses", rows)
    writer.flush()
    assert writer.stats.written == {"responses": 100} and writer.stats.repaired == {"responses": 1}
    assert con.execute("SELECT count(*), count(*) FILTER (error_type IS NULL) FROM responses").fetchone() == (100, 99)
    assert con.execute("SELECT prompt_id FROM responses WHERE error_type = 'invalid_row'").fetchall() == [("p041",)]
    assert con.execute("SELECT response_id FROM responses WHERE prompt_id = 'p077'").fetchone() == ("77",)


@pytest.mark.parametrize("bad", ["not json", '{"a": '])
def test_a_row_the_database_refuses_is_found_by_halving_and_stored_minimal(con, bad):
    """Text in a JSON column is taken as JSON text; DuckDB refuses it when it is not: the batch is
    halved until that row is found, the other 99 are written whole, that one as key + reason."""
    rows = [_response(i, tool_calls=[{"name": "f"}]) for i in range(100)]
    rows[63]["tool_calls"] = bad
    p = Problems()
    assert upsert(con, "responses", rows, problems=p) == 100
    assert (p.written, p.repaired, p.rejected) == (100, 1, 0)
    assert con.execute("SELECT count(*) FROM responses WHERE text IS NOT NULL AND error_type IS NULL").fetchone()[0] == 99
    [row] = _rows(con, "SELECT * FROM responses WHERE prompt_id = 'p063'")
    assert row["error_type"] == "invalid_row" and "Malformed JSON" in row["error_message"]
    assert (row["role"], row["started_at"], row["text"], row["tool_calls"]) == ("baseline", T0, None, None)


def test_a_refused_row_whose_identifying_columns_are_refused_too_is_stored_bare(con, monkeypatch):
    """Bug found here: the minimal form kept `started_at`; when that was what DuckDB refused, the
    retry raised StoreWriteError and the run stopped (62 of 100 rows lost). Text timestamps are
    now parsed first; should the database refuse a minimal row, the key and reason are stored."""
    import harness.store.validate as validate

    monkeypatch.setitem(validate.CHECKS, "TIMESTAMPTZ", lambda v: v)  # the old check: any text passes to DuckDB
    rows = [_response(i, started_at="2026-01-01T00:00:00Z") for i in range(100)]
    rows[37]["started_at"] = "yesterday"
    p = Problems()
    assert upsert(con, "responses", rows, problems=p) == 100
    assert (p.written, p.repaired, p.rejected) == (100, 1, 0)
    [row] = _rows(con, "SELECT * FROM responses WHERE prompt_id = 'p037'")
    assert row["error_type"] == "invalid_row" and row["started_at"] is None and "invalid timestamp" in row["error_message"]


def test_clean_rows_redacts_secrets_in_values_lists_json_and_its_own_notes():
    key = "sk-secret-0123456789"
    red = Redactor([("RC_KEY", key)])
    p = Problems()
    [row] = clean_rows("responses", [_response(0, text=f"echo {key}", flags=[None, key], tool_calls=[{"a": f'"{key}"'}],
                                                usage_raw=f"Bearer {key}", finish_reason={"k": key})], red, p)
    assert key not in repr(row) and key not in repr(p.examples)
    assert row["text"] == "echo [redacted RC_KEY]" and row["flags"] == [None, "[redacted RC_KEY]"]
    assert "[redacted RC_KEY]" in row["tool_calls"] and "[redacted RC_KEY]" in row["error_message"]


# -- the store itself failing ----------------------------------------------------------------------

def test_a_store_failure_is_kept_counted_and_later_flushes_still_write(con, monkeypatch):
    import harness.store.writer as writer_mod

    real, calls = writer_mod._insert, []

    def failing(c, table, rows):
        calls.append(table)
        if table == "responses" and len(calls) == 2:
            raise duckdb.IOException("IO Error: No space left on device")
        return real(c, table, rows)

    monkeypatch.setattr(writer_mod, "_insert", failing)
    writer = BatchWriter(con)
    writer.add("responses", [_response(i) for i in range(10)])
    writer.flush()
    writer.add("responses", [_response(i) for i in range(10, 30)])
    writer.add("prompts", [{"run_id": "r", "prompt_id": "p"}])
    with pytest.raises(StoreWriteError, match="could not write 20 responses rows to the store: IOException: IO Error: No space"):
        writer.flush()
    assert isinstance(writer.failure, StoreWriteError)
    assert writer.stats.written == {"responses": 10, "prompts": 1} and writer.stats.lost == {"responses": 20}
    writer.add("responses", [_response(i) for i in range(30, 35)])
    writer.flush()  # the store works again: written, and the first failure is kept
    assert writer.stats.written == {"responses": 15, "prompts": 1} and writer.failure is not None
    assert con.execute("SELECT count(*) FROM responses").fetchone()[0] == 15
