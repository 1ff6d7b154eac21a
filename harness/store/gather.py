"""Gathering several stores into one: every table of every run, so the runs of several proxy
replicas (each writing its own store: DuckDB allows one writing process per file) are listed,
scored, reported and gated from one file.

Per source run, its rows are first deleted from the target and then copied, in one transaction:
gathering again (a replica's store has grown, a window has closed) refreshes that run instead of
duplicating it. Run ids are time plus random, so runs of different replicas never collide. A source
a proxy is still writing is read through a snapshot (store.connect(read_only=True)).

`pool` instead makes one run of them all, so one report covers every replica's traffic: prompt ids
(`p000000001`, ...) repeat across replicas, so each row's prompt id becomes `SOURCE_RUN/PROMPT_ID`.
Server metrics are not pooled: counter deltas of different servers' scrapes in one run would be
wrong; they stay with the replica runs `gather` copies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.store.schema import TABLES, columns, json_columns
from harness.store.writer import to_json


@dataclass
class Gathered:
    store: Path
    runs: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows copied


def _shared_columns(src: Any) -> dict[str, list[str]]:
    """Per table, the columns of this schema the source store has (an older store may lack some), in schema order."""
    have: dict[str, set[str]] = {}
    for table, col in src.execute("SELECT table_name, column_name FROM information_schema.columns "
                                  "WHERE table_schema = 'main'").fetchall():
        have.setdefault(table, set()).add(col)
    return {t: [c for c in columns(t) if c in have.get(t, ())] for t in TABLES}


def _insert_batch(out: Any, table: str, batch: Any, check: Any = None) -> None:
    """INSERT an Arrow batch into `table` (inside the caller's transaction); `check(out)` runs with it registered."""
    names = ", ".join(batch.column_names)
    out.register("_routecheck_gather", batch)
    try:
        if check is not None:
            check(out)
        out.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM _routecheck_gather")
    finally:
        out.unregister("_routecheck_gather")


def gather(target: Path, sources: list[Path]) -> list[Gathered]:
    """Copy every run of each source store into `target` (created if missing); one Gathered per source."""
    from harness.store import StoreError, connect

    target = Path(target)
    resolved = {Path(s).resolve() for s in sources}
    if target.resolve() in resolved:
        raise StoreError(f"{target}: the target is also a source; gather into a new file")
    out = connect(target)
    done: list[Gathered] = []
    try:
        for src_path in sources:
            src = connect(Path(src_path), read_only=True)
            try:
                g = Gathered(Path(src_path))
                g.runs = [r for (r,) in src.execute("SELECT run_id FROM runs ORDER BY started_at, run_id").fetchall()]
                shared = _shared_columns(src)
                out.execute("BEGIN TRANSACTION")
                try:
                    for table in TABLES:
                        cols = shared[table]
                        if not cols or not g.runs:
                            g.rows[table] = 0
                            continue
                        marks = ", ".join("?" for _ in g.runs)
                        out.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", g.runs)
                        batch = src.sql(f"SELECT {', '.join(cols)} FROM {table} WHERE run_id IN ({marks})", params=g.runs).to_arrow_table()
                        g.rows[table] = batch.num_rows
                        if batch.num_rows:
                            _insert_batch(out, table, batch)
                    out.execute("COMMIT")
                except BaseException:
                    out.execute("ROLLBACK")
                    raise
                done.append(g)
            finally:
                src.close()
    finally:
        out.close()
    return done


POOL_SKIPS = ("runs", "server_metrics")  # the pooled run row is built; metrics are per server and run


@dataclass
class Pooled:
    run_id: str
    runs: list[tuple[Path, str]] = field(default_factory=list)  # (store, source run)
    rows: dict[str, int] = field(default_factory=dict)


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


def pooled_run_row(run_id: str, sources: list[dict[str, Any]]) -> dict[str, Any]:
    """The pooled run's row from its source runs' rows; raises ValueError when they do not describe
    one comparison (a route configured differently, another primary)."""
    routes: dict[str, Any] = {}
    for src in sources:
        for r in _json(src["routes"]) or []:
            have = routes.setdefault(r.get("name"), r)
            if have != r:
                raise ValueError(f"route {r.get('name')!r} differs between run {sources[0]['run_id']} and run {src['run_id']}; "
                                 "pool runs of the same routes")
    options = [_json(s["options"]) or {} for s in sources]
    primaries = {o.get("primary") for o in options}
    if len(primaries) > 1:
        raise ValueError(f"the runs have different primaries ({', '.join(sorted(map(str, primaries)))}); pool runs of one primary")
    pooled: dict[str, Any] = dict(options[0])
    pooled.pop("window_end", None)
    pooled["pooled_from"] = [s["run_id"] for s in sources]
    if any("calls" in o for o in options):  # proxy runs: the counts the report quotes, summed
        calls: dict[str, Any] = {"primary": 0, "primary_errors": 0, "mirror": {}, "not_mirrored": {}}
        for o in options:
            c = o.get("calls") or {}
            calls["primary"] += c.get("primary", 0)
            calls["primary_errors"] += c.get("primary_errors", 0)
            for route, counts in (c.get("mirror") or {}).items():
                into = calls["mirror"].setdefault(route, {})
                for k, n in counts.items():
                    into[k] = into.get(k, 0) + n
            for route, n in (c.get("not_mirrored") or {}).items():
                calls["not_mirrored"][route] = calls["not_mirrored"].get(route, 0) + n
        pooled["calls"] = calls
        pooled["mirror_rate_changes"] = sorted((e for o in options for e in o.get("mirror_rate_changes") or []),
                                               key=lambda e: e.get("at", ""))
    statuses = {s["status"] for s in sources}
    status = next((st for st in ("running", "failed", "interrupted") if st in statuses), "completed")
    finished = [s["finished_at"] for s in sources]
    corpora = {(s["corpus_path"], s["corpus_sha256"]) for s in sources}
    corpus = corpora.pop() if len(corpora) == 1 else (None, None)
    return {
        "run_id": run_id, "started_at": min(s["started_at"] for s in sources),
        "finished_at": None if None in finished else max(finished), "status": status,
        "corpus_path": corpus[0], "corpus_sha256": corpus[1], "routes": list(routes.values()), "options": pooled,
        "tool_version": sources[0]["tool_version"], "n_prompts": sum(s["n_prompts"] or 0 for s in sources),
        "n_expected": sum(s["n_expected"] or 0 for s in sources),
        "note": f"pooled from {len(sources)} runs: {', '.join(s['run_id'] for s in sources)}",
    }


def pool(target: Path, sources: list[Path], run_id: str, only: list[str] | None = None) -> Pooled:
    """Copy the runs of every source store (those in `only`, if given) into `target` as one run
    `run_id`, replacing what an earlier pooling put there (so pooling again after the replicas
    have grown refreshes it). One transaction: the pooled run is all there or not at all."""
    from harness.store import StoreError, connect

    target = Path(target)
    if target.resolve() in {Path(s).resolve() for s in sources}:
        raise StoreError(f"{target}: the target is also a source; pool into a new file")
    result = Pooled(run_id)
    run_rows: list[dict[str, Any]] = []
    batches: list[tuple[str, Any]] = []
    for src_path in sources:
        src = connect(Path(src_path), read_only=True)
        try:
            shared = _shared_columns(src)
            cur = src.execute("SELECT * FROM runs ORDER BY started_at, run_id")
            names = [d[0] for d in cur.description]
            for row in cur.fetchall():
                r = dict(zip(names, row))
                if only and r["run_id"] not in only:
                    continue
                if r["run_id"] == run_id:
                    raise StoreError(f"{src_path}: already holds a run {run_id}; pool under another id")
                run_rows.append(r)
                result.runs.append((Path(src_path), r["run_id"]))
                for table in TABLES:
                    if table in POOL_SKIPS:
                        continue
                    cols = shared[table]
                    if not cols:
                        continue
                    select = ", ".join(
                        "? AS run_id" if c == "run_id" else
                        "CASE WHEN prompt_id IS NULL THEN NULL ELSE ? || '/' || prompt_id END AS prompt_id" if c == "prompt_id" else c
                        for c in cols)
                    params = [p for c in cols for p in ([run_id] if c == "run_id" else [r["run_id"]] if c == "prompt_id" else [])]
                    batch = src.sql(f"SELECT {select} FROM {table} WHERE run_id = ?", params=[*params, r["run_id"]]).to_arrow_table()
                    if batch.num_rows:
                        batches.append((table, batch))
        finally:
            src.close()
    if only and (missing := sorted(set(only) - {rid for _, rid in result.runs})):
        raise StoreError(f"no run {', '.join(missing)} in {', '.join(map(str, sources))}")
    if not run_rows:
        raise StoreError(f"no runs to pool in {', '.join(map(str, sources))}")
    try:
        row = pooled_run_row(run_id, run_rows)
    except ValueError as e:
        raise StoreError(str(e)) from None
    out = connect(target)
    try:
        out.execute("BEGIN TRANSACTION")
        try:
            for table in TABLES:
                if "run_id" in columns(table):
                    out.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            run_cols, json_cols = columns("runs"), json_columns("runs")
            out.execute(f"INSERT INTO runs ({', '.join(run_cols)}) VALUES ({', '.join('?' for _ in run_cols)})",
                        [to_json(row[c]) if c in json_cols else row[c] for c in run_cols])

            def no_span_clash(con: Any) -> None:  # spans are keyed by trace and span id alone
                clash = con.execute("SELECT s.run_id, count(*) FROM spans s JOIN _routecheck_gather b USING (trace_id, span_id) "
                                    "GROUP BY s.run_id LIMIT 1").fetchall()  # not fetchone: an open result blocks the ROLLBACK
                for other, n in clash:
                    raise StoreError(f"{target}: already holds {n} of these spans under run {other} "
                                     "(gathered unpooled?); pool into a file of its own")

            for table, batch in batches:
                _insert_batch(out, table, batch, no_span_clash if table == "spans" else None)
                result.rows[table] = result.rows.get(table, 0) + batch.num_rows
            out.execute("COMMIT")
        except BaseException:
            out.execute("ROLLBACK")
            raise
    finally:
        out.close()
    return result
