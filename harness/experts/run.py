"""The expert stage's I/O: replay a run's responses through the offline probe into `expert_stats`,
and read the per-cohort statistics back (for `routecheck experts`, the report and the gate)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import duckdb

from harness.corpus import with_context
from harness.experts.panel import PanelRow, panel_rows
from harness.experts.records import Key, cohort_stats, from_rows, rest_stats, to_rows
from harness.experts.stats import DEFAULT_CAPACITY_FACTORS, GroupStats, ResponseRecord
from harness.store import upsert
from harness.store.views import MEASURED_RESPONSES

SOURCES = ("live", "returned", "probe")


class ExpertsError(ValueError):
    """The run has nothing to probe or report (no MoE route, no model directory, no responses)."""


@dataclass
class ProbeSummary:
    run_id: str
    route: str
    model: str
    responses: int
    tokens: int
    seconds: float
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")


def run_routes(con: duckdb.DuckDBPyConnection, run_id: str) -> list[dict[str, Any]]:
    row = con.execute("SELECT routes FROM runs WHERE run_id = ?", [run_id]).fetchone()
    if row is None or not row[0]:
        return []
    return json.loads(row[0]) if isinstance(row[0], str) else row[0]


def probe_targets(con: duckdb.DuckDBPyConnection, run_id: str, route: str | None, model: str | None) -> list[tuple[str, str]]:
    """(route, model directory) pairs to probe: the named route, else every MoE route of the run;
    the model is `--model`, else the route's `serve.model`."""
    routes = run_routes(con, run_id)
    if route is not None:
        chosen = [r for r in routes if r.get("name") == route]
        if not chosen and not routes:
            chosen = [{"name": route}]
        if not chosen:
            raise ExpertsError(f"run {run_id} has no route {route!r}; routes: {', '.join(r['name'] for r in routes)}")
    else:
        chosen = [r for r in routes if r.get("architecture") == "moe"]
        if not chosen:
            raise ExpertsError(f"run {run_id} has no route with architecture: moe (name one with --route)")
    out = []
    for r in chosen:
        path = model or ((r.get("serve") or {}).get("model"))
        if not path:
            raise ExpertsError(f"route {r['name']!r} has no serve.model: give the checkpoint with --model DIR")
        if not (Path(path) / "config.json").exists():
            raise ExpertsError(f"route {r['name']!r}: {path} is not a model directory (no config.json)")
        out.append((r["name"], str(path)))
    return out


_RESPONSES_SQL = f"""
SELECT r.prompt_id, r.route, r.sample, r.text, r.tool_calls, p.messages, p.context, p.tools
FROM {MEASURED_RESPONSES} r JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id
WHERE r.run_id = ? AND r.route = ? AND r.error_type IS NULL
ORDER BY r.prompt_id, r.sample
"""


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def answer_text(tokenizer: Any, messages: list[dict[str, Any]], text: str | None, tool_calls: list[dict[str, Any]] | None,
                tools: list[dict[str, Any]] | None) -> str:
    """The answer as the model wrote it: text, or tool calls rendered back by the model's own chat
    template (the server parsed them out of its text), without the end-of-turn marker."""
    if not tool_calls:
        return text or ""
    prompt = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": text or "", "tool_calls": tool_calls}],
                                         tools=tools, add_generation_prompt=False, tokenize=False)
    tail = full[len(prompt):] if full.startswith(prompt) else (text or "")
    eos = getattr(tokenizer, "eos_token", None)
    return tail.split(eos)[0] if eos and eos in tail else tail.rstrip()


def probe_run(con: duckdb.DuckDBPyConnection, run_id: str, route: str, model_dir: str,
              capacity_factors: Sequence[float] = DEFAULT_CAPACITY_FACTORS, batch_size: int = 8,
              progress: Callable[[int, int], None] | None = None) -> ProbeSummary:
    """Replay every successful response of `route` through the checkpoint and store its routing."""
    import time

    from harness.experts.probe import chat_token_ids, load_moe, probe_records

    rows = con.execute(_RESPONSES_SQL, [run_id, route]).fetchall()
    if not rows:
        raise ExpertsError(f"run {run_id} has no successful responses on route {route!r} to probe")
    model, tokenizer = load_moe(model_dir)
    t0 = time.perf_counter()
    keys, sequences = [], []
    for prompt_id, rname, sample, text, tool_calls, messages, context, tools in rows:
        msgs = with_context(_json(messages) or [], context)
        tools = _json(tools)
        answer = answer_text(tokenizer, msgs, text, _json(tool_calls), tools)
        sequences.append(chat_token_ids(tokenizer, msgs, answer, tools=tools))
        keys.append((prompt_id, rname, int(sample)))
    records = probe_records(model, sequences, batch_size=batch_size, capacity_factors=capacity_factors, progress=progress)
    seconds = time.perf_counter() - t0
    now = datetime.now(timezone.utc)
    out: list[dict[str, Any]] = []
    for (prompt_id, rname, sample), rec in zip(keys, records):
        out += to_rows(run_id, prompt_id, rname, sample, "probe", rec, now)
    upsert(con, "expert_stats", out)
    return ProbeSummary(run_id, route, model_dir, len(records), sum(r.tokens for r in records), seconds)


def load_records(con: duckdb.DuckDBPyConnection, run_id: str, route: str | None = None) -> dict[Key, ResponseRecord]:
    where, params = "WHERE run_id = ?", [run_id]
    if route is not None:
        where, params = where + " AND route = ?", params + [route]
    cur = con.execute(f"SELECT * FROM expert_stats {where}", params)
    names = [d[0] for d in cur.description]
    return from_rows(dict(zip(names, row)) for row in cur.fetchall())


def cohorts_of(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, str]:
    return {p: c or "default" for p, c in con.execute("SELECT prompt_id, cohort FROM prompts WHERE run_id = ?", [run_id]).fetchall()}


def load_cohort_stats(con: duckdb.DuckDBPyConnection, run_id: str, route: str | None = None
                      ) -> dict[tuple[str, str, str], GroupStats]:
    """(route, cohort, source) -> routing statistics for the run; empty when nothing was recorded."""
    return cohort_stats(load_records(con, run_id, route), cohorts_of(con, run_id))


def load_panel(con: duckdb.DuckDBPyConnection, run_id: str) -> list[PanelRow]:
    """The report's expert panel: every (route, cohort, source) with its route's other cohorts pooled.
    Empty when nothing was recorded, or for a store from before the `expert_stats` table."""
    try:
        records = load_records(con, run_id)
    except duckdb.CatalogException:
        return []
    if not records:
        return []
    cohort_of = cohorts_of(con, run_id)
    stats = cohort_stats(records, cohort_of)
    rest = {}
    for route, cohort, source in stats:
        if cohort != "(all)":
            other = rest_stats(records, cohort_of, route, cohort, source)
            if other is not None:
                rest[(route, cohort, source)] = other
    return panel_rows(stats, rest)


# Every id a call of the run is known by -> its response: the response row's id (single calls), each
# call span's gen_ai.response.id (trajectory steps too) and each server span's gen_ai.request.id
# (`attach_server_spans` gave it the client span's run, route, prompt and sample). Warm-ups (sample < 0) are left out.
_CALL_IDS_SQL = """
SELECT DISTINCT rid, prompt_id, sample FROM (
    SELECT response_id AS rid, prompt_id, sample FROM responses WHERE run_id = ? AND route = ?
    UNION ALL
    SELECT json_extract_string(attributes, '$."gen_ai.response.id"'), prompt_id, sample
    FROM spans WHERE run_id = ? AND route = ? AND engine IS NULL
    UNION ALL
    SELECT json_extract_string(attributes, '$."gen_ai.request.id"'), prompt_id, sample
    FROM spans WHERE run_id = ? AND route = ? AND engine IS NOT NULL
) WHERE rid IS NOT NULL AND prompt_id IS NOT NULL AND sample >= 0
"""


def store_live(con: duckdb.DuckDBPyConnection, run_id: str, route: str, spool: Any,
               capacity_factors: Sequence[float] = DEFAULT_CAPACITY_FACTORS) -> int:
    """Join a live-capture spool (harness.experts.capture.Spool, already polled) to the run's responses
    by request id and replace the route's `live` rows; a trajectory's model calls are summed into
    its response. Returns how many responses got routing."""
    from collections import defaultdict

    from harness.experts.stats import merge_records

    by_response: dict[tuple[str, int], list[ResponseRecord]] = defaultdict(list)
    seen: set[tuple[str, str, int]] = set()
    for rid, prompt_id, sample in con.execute(_CALL_IDS_SQL, [run_id, route] * 3).fetchall():
        if (rid, prompt_id, sample) in seen:
            continue
        seen.add((rid, prompt_id, sample))
        rec = spool.record(rid, capacity_factors)
        if rec is not None:
            by_response[(prompt_id, int(sample))].append(rec)
    now = datetime.now(timezone.utc)
    rows: list[dict[str, Any]] = []
    for (prompt_id, sample), recs in sorted(by_response.items()):
        rows += to_rows(run_id, prompt_id, route, sample, "live", merge_records(recs, source="live") if len(recs) > 1 else recs[0], now)
    con.execute("DELETE FROM expert_stats WHERE run_id = ? AND route = ? AND source = 'live'", [run_id, route])
    upsert(con, "expert_stats", rows)
    return len(by_response)
