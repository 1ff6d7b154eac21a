"""Per-cohort accuracy of each route in a routecheck run, read from routecheck's own scores.

    routecheck mirror --corpus examples/corpus.jsonl --routes routes.yaml
    routecheck score latest
    python -m testbed.measure latest [--db traces/routecheck.duckdb] [--show-errors 3]

A response is correct when `task_completion` passed (answer rows: the bundled corpus asks for an
exact match) or `tool_selection` passed (tool rows: exactly the expected call, name and arguments).
A not-applicable score counts as wrong: an answer row answered with a tool call, or a tool row
answered in prose, is a miss. Errored calls count as wrong too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from harness.store import DEFAULT_DB, connect
from harness.store.views import MEASURED_RESPONSES, resolve_run_id

ROWS_SQL = f"""
SELECT r.route, r.cohort, r.prompt_id, r.sample, r.text, CAST(r.tool_calls AS VARCHAR) AS tool_calls,
       CAST(p.expected AS VARCHAR) AS expected,
       coalesce(CASE WHEN json_extract(p.expected, '$.tool') IS NOT NULL THEN tool.passed ELSE task.passed END, false)
           AS correct
FROM {MEASURED_RESPONSES} r
JOIN prompts p USING (run_id, prompt_id)
LEFT JOIN scores task ON task.run_id = r.run_id AND task.prompt_id = r.prompt_id AND task.route = r.route
     AND task.sample = r.sample AND task.evaluator = 'task_completion'
LEFT JOIN scores tool ON tool.run_id = r.run_id AND tool.prompt_id = r.prompt_id AND tool.route = r.route
     AND tool.sample = r.sample AND tool.evaluator = 'tool_selection'
WHERE r.run_id = ?
"""


def load_results(db: Path, run: str) -> tuple[str, pd.DataFrame]:
    con = connect(db, read_only=True)
    try:
        run_id = resolve_run_id(con, run)
        scored = con.execute(
            "SELECT count(*) FROM scores WHERE run_id = ? AND evaluator IN ('task_completion', 'tool_selection')", [run_id]
        ).fetchone()[0]
        if not scored:
            raise LookupError(f"run {run_id} has no task_completion/tool_selection scores: run `routecheck score {run_id}` first")
        return run_id, con.execute(ROWS_SQL, [run_id]).df()
    finally:
        con.close()


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    """Percent correct per cohort (rows) and route (columns), with an `all` row."""
    table = df.pivot_table(index="cohort", columns="route", values="correct", aggfunc="mean")
    table.loc["all"] = df.groupby("route")["correct"].mean()
    table = (100 * table).round(1)
    prompts = df.groupby("cohort")["prompt_id"].nunique()
    prompts.loc["all"] = df["prompt_id"].nunique()
    table.insert(0, "n", prompts)
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", default="latest", help="run id, unique prefix or 'latest'")
    ap.add_argument("--db", type=Path, default=DEFAULT_DB, help="DuckDB store")
    ap.add_argument("--show-errors", type=int, default=0, help="print this many wrong rows per route and cohort")
    args = ap.parse_args(argv)
    try:
        run_id, df = load_results(args.db, args.run)
    except LookupError as e:
        sys.exit(f"error: {e}")
    if args.show_errors:
        for (route, cohort), group in df[~df["correct"]].groupby(["route", "cohort"]):
            for _, r in group.head(args.show_errors).iterrows():
                print(f"  [{route} {cohort}] {r['prompt_id']}: got {r['text']!r} {r['tool_calls']} expected {r['expected']}",
                      file=sys.stderr)
    print(f"run {run_id}: percent correct (exact answer, or exactly the expected tool call)")
    print(accuracy_table(df).to_string())


if __name__ == "__main__":
    main()
