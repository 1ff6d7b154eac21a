"""The score stage: run evaluators over a run's responses and store the results in `scores`.

Reads responses joined with their prompts from the store, runs each evaluator in batches and
upserts one row per (run, prompt, route, sample, evaluator): re-scoring replaces rows, so it is
idempotent. Failed calls (error_type set) are stored as not applicable ("call failed") rather
than scored, so a timeout never reads as a hallucination.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from evaluators import BoundEvaluator, EvalRecord, EvalResult, EvaluatorError, parse_json_field
from evaluators.config import EvaluatorSpec, parse_cli_spec, resolve_specs
from harness import store
from harness.store.views import MEASURED_RESPONSES, resolve_run_id

_QUERY = f"""
SELECT r.run_id, r.prompt_id, r.route, r.sample, r.cohort AS r_cohort, r.text, r.tool_calls,
       r.error_type, r.error_message, r.steps, r.stop_reason,
       p.cohort AS p_cohort, p.messages, p.context, p.tools, p.expected, p.metadata
FROM {MEASURED_RESPONSES} r
LEFT JOIN prompts p ON p.run_id = r.run_id AND p.prompt_id = r.prompt_id
WHERE r.run_id = ?
ORDER BY r.prompt_id, r.route, r.sample
"""


# The steps of the run's trajectories; a resumed trajectory may have left longer stale rows.
_STEPS_QUERY = f"""
SELECT s.prompt_id, s.route, s.sample, s.step, s.text, s.tool_calls, s.tool_results, s.finish_reason
FROM steps s JOIN {MEASURED_RESPONSES} r USING (run_id, prompt_id, route, sample)
WHERE s.run_id = ? AND s.step <= r.steps
ORDER BY s.prompt_id, s.route, s.sample, s.step
"""


@dataclass
class ScoreSummary:
    run_id: str
    n_responses: int
    rows_written: int
    per_evaluator: dict[str, dict[str, Any]] = field(default_factory=dict)


def load_records(con: Any, run_id: str) -> tuple[list[EvalRecord], list[str | None]]:
    """The run's responses as EvalRecords, and each one's error (None when the call succeeded)."""
    df = con.execute(_QUERY, [run_id]).df()
    steps: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for s in con.execute(_STEPS_QUERY, [run_id]).df().to_dict("records"):
        steps.setdefault((s["prompt_id"], s["route"], int(s["sample"])), []).append({
            "step": int(s["step"]), "text": _none(s["text"]), "finish_reason": _none(s["finish_reason"]),
            "tool_calls": parse_json_field(_none(s["tool_calls"])) or [],
            "tool_results": parse_json_field(_none(s["tool_results"])) or []})
    records, errors = [], []
    for row in df.to_dict("records"):
        meta = parse_json_field(row["metadata"])
        trajectory = _none(row["steps"]) is not None
        records.append(
            EvalRecord(
                run_id=row["run_id"],
                prompt_id=row["prompt_id"],
                route=row["route"],
                sample=int(row["sample"]),
                cohort=_none(row["p_cohort"]) or _none(row["r_cohort"]),
                messages=parse_json_field(row["messages"]) or [],
                context=_none(row["context"]),
                tools=parse_json_field(_none(row["tools"])),
                expected=parse_json_field(_none(row["expected"])),
                text=_none(row["text"]),
                tool_calls=parse_json_field(_none(row["tool_calls"])),
                metadata=meta if isinstance(meta, dict) else {},
                steps=steps.get((row["prompt_id"], row["route"], int(row["sample"])), []) if trajectory else None,
                stop_reason=_none(row["stop_reason"]),
            )
        )
        err = _none(row["error_type"])
        errors.append(None if err is None else f"{err}: {_none(row['error_message']) or ''}".rstrip(": "))
    return records, errors


def _none(value: Any) -> Any:
    """pandas gives NaN/NaT/None for SQL NULL; normalise to None."""
    try:
        import pandas as pd

        return None if value is None or (not isinstance(value, (list, dict)) and pd.isna(value)) else value
    except (TypeError, ValueError):
        return value


def _row(rec: EvalRecord, ev: BoundEvaluator, res: EvalResult, now: datetime) -> dict[str, Any]:
    return {
        "run_id": rec.run_id,
        "prompt_id": rec.prompt_id,
        "route": rec.route,
        "sample": rec.sample,
        "evaluator": ev.name,
        "score": res.score if res.applicable else None,
        "passed": res.passed if res.applicable else None,
        "applicable": res.applicable,
        "reason": res.reason,
        "details": res.details,
        "evaluator_version": ev.version,
        "scored_at": now,
    }


def score_run(
    db_path: str | Path,
    run_id: str,
    evaluator_specs: Sequence[EvaluatorSpec | str] | None = None,
    progress: bool = True,
    batch_size: int = 256,
) -> ScoreSummary:
    """Score every response of `run_id` (or `latest`) with each evaluator; returns counts per evaluator."""
    specs = [s if isinstance(s, EvaluatorSpec) else parse_cli_spec(s) for s in (evaluator_specs or resolve_specs(None, None))]
    bound = [s.bind() for s in specs]  # fail on unknown names/options before reading anything
    con = store.connect(db_path)
    try:
        run_id = _resolve_run(con, run_id)
        records, errors = load_records(con, run_id)
        ok = [i for i, e in enumerate(errors) if e is None]
        summary = ScoreSummary(run_id=run_id, n_responses=len(records), rows_written=0)
        console = Console(stderr=True)
        with Progress(
            TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, disable=not progress or not records, transient=False,
        ) as bar:
            for ev in bound:
                task = bar.add_task(f"score {ev.name}", total=len(records))
                now = datetime.now(timezone.utc)
                failed_rows = [
                    _row(records[i], ev, EvalResult.not_applicable("call failed", error=errors[i]), now) for i, e in enumerate(errors) if e is not None
                ]
                summary.rows_written += store.upsert(con, "scores", failed_rows)
                bar.advance(task, len(failed_rows))
                for start in range(0, len(ok), batch_size):
                    batch = [records[i] for i in ok[start : start + batch_size]]
                    results = ev.evaluate(batch)
                    rows = [_row(rec, ev, res, now) for rec, res in zip(batch, results)]
                    summary.rows_written += store.upsert(con, "scores", rows)
                    bar.advance(task, len(batch))
        summary.per_evaluator = _evaluator_summary(con, run_id, [ev.name for ev in bound])
    finally:
        con.close()
    return summary


def _resolve_run(con: Any, run_id: str) -> str:
    """`latest`, a full id or a unique prefix (as `routecheck runs` shows them)."""

    try:
        return resolve_run_id(con, run_id)
    except LookupError:
        # Responses written without a runs row (imported data) can still be scored by full id.
        if con.execute("SELECT count(*) FROM responses WHERE run_id = ?", [run_id]).fetchone()[0]:
            return run_id
        raise


def _evaluator_summary(con: Any, run_id: str, names: list[str]) -> dict[str, dict[str, Any]]:
    df = con.execute(
        """
        SELECT evaluator, route, count(*) AS n, count(*) FILTER (WHERE applicable) AS applicable,
               avg(score) AS mean_score, avg(CASE WHEN passed THEN 1.0 ELSE 0.0 END) FILTER (WHERE applicable) AS pass_rate
        FROM scores WHERE run_id = ? AND list_contains(?, evaluator)
        GROUP BY evaluator, route ORDER BY evaluator, route
        """,
        [run_id, names],
    ).df()
    out: dict[str, dict[str, Any]] = {}
    for row in df.to_dict("records"):
        out.setdefault(row["evaluator"], {})[row["route"]] = {
            "n": int(row["n"]),
            "applicable": int(row["applicable"]),
            "mean_score": None if _none(row["mean_score"]) is None else float(row["mean_score"]),
            "pass_rate": None if _none(row["pass_rate"]) is None else float(row["pass_rate"]),
        }
    return out
