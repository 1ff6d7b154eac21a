"""The testbed does what it is for: the whole bundled corpus on both real vLLM routes.

Issue 4: on that run the report flags a quality regression in the planted cohort and in no other
cohort. Issue 3: the planted regression is real (MoE at least 20 points below dense in that
cohort), and every other cohort of both models reaches 80 % (testbed/MODEL_CARD.md has the table).
The same run carries the plumbing checks on real vLLM servers: parsed tool calls, token counts
equal to the servers' own counters, a server span with queue/prefill/decode times under every call.
Slow: two vLLM CPU servers start (about 95 s), then 650 prompts x 2 routes (about 2 minutes).
"""

from __future__ import annotations

import json

import duckdb
import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.config import load_routes
from harness.corpus import read_corpus
from harness.mirror.runner import MirrorOptions, run_mirror
from harness.score.run import score_run
from testbed.build import PLANTED_COHORT
from testbed.measure import accuracy_table, load_results
from test_vllm_e2e import CORPUS, ROUTES, TOOL_COHORTS, _model_processes, _testbed_missing

pytestmark = [pytest.mark.slow, pytest.mark.vllm,
              pytest.mark.skipif(_testbed_missing() is not None, reason=str(_testbed_missing()))]


@pytest.fixture(scope="module")
def testbed_run(tmp_path_factory) -> tuple:
    db = tmp_path_factory.mktemp("testbed-run") / "store.duckdb"
    # No warm-up calls: exact counts of calls, spans and server spans (quality does not depend on it).
    summary = run_mirror(load_routes(ROUTES), MirrorOptions(corpus=CORPUS, db=db, warmup=0), scrape_interval_s=5)
    assert summary.status == "completed" and summary.prompts == 650 and summary.calls == 2 * 650
    assert not _model_processes(), "vLLM processes left after the run"
    score_run(db, summary.run_id, progress=False)  # the default evaluators, as `routecheck score` runs them
    return db, summary.run_id


def test_planted_gap_and_the_80_percent_targets(testbed_run) -> None:
    db, run_id = testbed_run
    _, df = load_results(db, run_id)
    table = accuracy_table(df)
    print(table.to_string())
    dense, moe = table["dense-baseline"], table["moe-candidate"]
    assert len([c for c in table.index if c != "all"]) == 5
    assert dense[PLANTED_COHORT] - moe[PLANTED_COHORT] >= 20, table.to_string()
    met = [(route, cohort) for route in ("dense-baseline", "moe-candidate") for cohort in table.index
           if cohort != "all" and (route, cohort) != ("moe-candidate", PLANTED_COHORT)]
    assert all(table[route][cohort] >= 80 for route, cohort in met), table.to_string()


def test_report_flags_the_planted_cohort_only(testbed_run, tmp_path) -> None:
    db, run_id = testbed_run
    res = CliRunner().invoke(app, ["report", run_id, "--db", str(db), "--out-dir", str(tmp_path), "--quiet"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "report.json").read_text())
    flagged = {(c["cohort"], c["metric"]) for c in report["comparisons"]
               if c["verdict"] == "regression" and c["scope"] == "cohort" and c["kind"] == "quality"}
    assert {cohort for cohort, _ in flagged} == {PLANTED_COHORT}, sorted(flagged)
    assert (PLANTED_COHORT, "task_completion.pass_rate") in flagged


def test_real_vllm_plumbing(testbed_run) -> None:
    db, run_id = testbed_run
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM measured_responses WHERE error_type IS NULL").fetchone()[0] == 2 * 650
    cohorts = {r.id: r.cohort for r in read_corpus(CORPUS)}

    # Real tool_calls, parsed by vLLM's hermes parser, on the tool cohorts.
    rows = con.execute("SELECT route, prompt_id, tool_calls, finish_reason FROM responses").fetchall()
    for route in ("dense-baseline", "moe-candidate"):
        tool_rows = [json.loads(tc) for r, p, tc, _ in rows if r == route and cohorts[p] in TOOL_COHORTS]
        with_calls = [calls for calls in tool_rows if calls]
        assert len(with_calls) >= 0.5 * len(tool_rows), (route, tool_rows)
        # Plumbing, not model quality (the tool_selection evaluator judges names and arguments):
        # every parsed call has an id and a name, and offered tools do come back by name.
        calls = [call for calls in with_calls for call in calls]
        assert all(call["id"] and call["function"]["name"] for call in calls)
        assert any(call["function"]["name"] in {"track_order", "run_sql"} for call in calls), (route, calls)

    # Token counts equal what the servers counted (Prometheus counters, after - before).
    usage = dict(con.execute("SELECT route, (sum(input_tokens), sum(output_tokens)) FROM responses GROUP BY 1").fetchall())
    deltas = con.execute("""
        SELECT route, metric, sum(delta) FROM (
          SELECT route, metric, labels, arg_max(value, scraped_at) FILTER (WHERE phase = 'after')
                 - coalesce(arg_max(value, scraped_at) FILTER (WHERE phase = 'before'), 0) AS delta
          FROM server_metrics WHERE metric IN ('vllm:prompt_tokens_total', 'vllm:generation_tokens_total')
          GROUP BY ALL) GROUP BY ALL""").fetchall()
    server = {(r, m): v for r, m, v in deltas}
    for route, (inp, out) in usage.items():
        assert server[(route, "vllm:prompt_tokens_total")] == inp, route
        assert server[(route, "vllm:generation_tokens_total")] == out, route
    phases = {p for (p,) in con.execute("SELECT DISTINCT phase FROM server_metrics").fetchall()}
    assert {"before", "after"} <= phases

    # A server llm_request span under every call span, with queue / prefill / decode times.
    timings = con.execute("SELECT server_queue_s, server_prefill_s, server_decode_s, latency_s FROM response_timings").fetchall()
    assert len(timings) == 2 * 650
    for queue, prefill, decode, latency in timings:
        assert queue is not None and prefill is not None and decode is not None
        assert 0 <= queue and 0 < prefill and 0 <= decode and prefill + decode <= latency + 0.05
    attached = con.execute("SELECT count(*) FROM spans WHERE name = 'llm_request' AND run_id = ?", [run_id]).fetchone()[0]
    assert attached == 2 * 650
