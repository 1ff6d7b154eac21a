"""Verdicts need data (issue 18, item 4): runs and metrics without data never pass, and the exit
code says which case it is (0 pass, 1 regression or a metric without data, 2 bad input or a run
without data, 3 internal error). Real stores (harness/testing/synthetic.py), the real CLI, and the
outputs read back as a user's tools read them (JUnit with an XML parser, Markdown rendered).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest
from markdown_it import MarkdownIt
from typer.testing import CliRunner

from harness.cli import app
from harness.report.build import make_report
from harness.report.policy import load_policy
from harness.config import ConfigError
from harness.store import connect
from harness.testing.synthetic import deterministic_store

runner = CliRunner()
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "harness/report/report.schema.json").read_text())
LATENCY_ONLY = "min_samples: 10\nmetrics:\n  latency_p99_s: {margin_rel: 0.5}\n"
QUALITY = "min_samples: 10\nmetrics:\n  task_completion.pass_rate: {margin: 0.1}\n"
ALL_FAIL = {"candidate": {"legal": 40, "sql": 40}}


def _gate(tmp_path: Path, db: Path, policy: str, run: str = "run-hand"):
    pol = tmp_path / "gate.yaml"
    pol.write_text(policy)
    out = tmp_path / "gate-out"
    res = runner.invoke(app, ["gate", run, "--db", str(db), "--policy", str(pol), "--out-dir", str(out)])
    return res, out


def _report(tmp_path: Path, db: Path, *extra: str):
    out = tmp_path / "report-out"
    res = runner.invoke(app, ["report", "run-hand", "--db", str(db), "--out-dir", str(out), *extra])
    return res, out


def _cases(path: Path) -> dict[str, ET.Element]:
    """testcase name -> element, from the JUnit file parsed as CI parses it."""
    return {c.get("name"): c for c in ET.parse(path).getroot().iter("testcase")}


def _md_html(path: Path) -> str:
    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(path.read_text())


# ------------------------------------------------------------------ a candidate whose calls all fail

def test_candidate_failing_every_call_fails_a_latency_only_policy(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", cohorts={"legal": 40, "sql": 40}, errors=ALL_FAIL)
    res, out = _gate(tmp_path, db, LATENCY_ONLY)
    assert res.exit_code == 1, res.output
    cases = _cases(out / "gate.junit.xml")
    # The error rate is gated though the policy does not name it; latency has no data: both fail.
    for scope in ("(all)", "legal", "sql"):
        assert cases[f"{scope} :: error_rate"].find("failure").get("type") == "regression"
        failure = cases[f"{scope} :: latency_p99_s"].find("failure")
        assert failure.get("type") == "no_data" and "every call to moe" in failure.get("message")
    assert cases["(all) :: timeout_rate"].find("failure") is None
    assert "3 no data" in res.output and "http_500 x80" in res.output


def test_candidate_failing_every_call_fails_a_quality_policy_not_no_such_metric(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", cohorts={"legal": 40, "sql": 40}, errors=ALL_FAIL)
    res, out = _gate(tmp_path, db, QUALITY)
    assert res.exit_code == 1, res.output
    assert "no such metric" not in res.output
    failure = _cases(out / "gate.junit.xml")["(all) :: task_completion.pass_rate"].find("failure")
    assert failure.get("type") == "no_data"
    assert failure.get("message") == "no data: moe has no task_completion.pass_rate data: every call failed (80 of 80)"
    # The report with that policy writes the metric as insufficient, with the same reason.
    res, rout = _report(tmp_path, db, "--policy", str(tmp_path / "gate.yaml"), "--quiet")
    assert res.exit_code == 0, res.output
    data = json.loads((rout / "report.json").read_text())
    err = next(c for c in data["comparisons"] if c["metric"] == "error_rate" and c["cohort"] == "(all)")
    assert err["verdict"] == "regression" and err["candidate_value"] == 1.0


def test_metric_without_data_on_a_route_fails_or_is_insufficient_per_policy(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", cohorts={"legal": 40, "sql": 40})
    with connect(db) as con:  # the candidate's answers were never scored as applicable
        con.execute("UPDATE scores SET applicable = false, passed = NULL, score = NULL WHERE route = 'moe'")
    res, out = _gate(tmp_path, db, QUALITY)
    assert res.exit_code == 1, res.output
    msg = _cases(out / "gate.junit.xml")["sql :: task_completion.pass_rate"].find("failure").get("message")
    assert msg.startswith("no data: moe has no task_completion.pass_rate data in cohort sql (task_completion scored none")
    res, out = _gate(tmp_path, db, QUALITY + "on_no_data: insufficient\n")
    assert res.exit_code == 0, res.output   # insufficient warns by default ...
    skipped = _cases(out / "gate.junit.xml")["sql :: task_completion.pass_rate"].find("skipped")
    assert skipped.get("message").startswith("insufficient: no data: moe has no")
    assert "PASS" in res.output
    res, _ = _gate(tmp_path, db, QUALITY + "on_no_data: insufficient\non_insufficient: fail\n")
    assert res.exit_code == 1, res.output   # ... and fails when asked


def test_a_cohort_whose_candidate_calls_all_fail_is_not_left_out(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", cohorts={"legal": 40, "sql": 40}, errors={"candidate": {"sql": 40}})
    res, out = _gate(tmp_path, db, LATENCY_ONLY + "cohorts:\n  sql:\n    \"*\": {enabled: false}\n")
    assert res.exit_code == 1, res.output
    cases = _cases(out / "gate.junit.xml")
    assert cases["sql :: latency_p99_s"].find("skipped") is not None     # the policy disabled sql ...
    assert cases["sql :: error_rate"].find("failure") is not None        # ... but not its error rate
    assert cases["legal :: latency_p99_s"].find("failure") is None


def test_error_and_timeout_rates_cannot_be_disabled(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", cohorts={"legal": 40, "sql": 40})
    for text, key in [("metrics:\n  error_rate: {enabled: false}\n", "metrics.error_rate.enabled"),
                      ("metrics:\n  latency_p99_s: {}\ncohorts:\n  sql:\n    timeout_rate: {enabled: false}\n",
                       "cohorts.sql.timeout_rate.enabled")]:
        res, _ = _gate(tmp_path, db, text)
        assert res.exit_code == 2 and key in res.output and "always gated" in res.output, res.output
        with pytest.raises(ConfigError):
            load_policy(tmp_path / "gate.yaml")
    # Loosening is allowed, and an absent rule is added with the default margin.
    (tmp_path / "p.yaml").write_text("metrics:\n  error_rate: {margin: 0.2}\n  latency_p99_s: {}\n")
    policy = load_policy(tmp_path / "p.yaml")
    assert policy.metrics["error_rate"].margin == 0.2 and "timeout_rate" in policy.metrics


def test_single_cohort_without_overall_is_still_gated(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", cohorts={"legal": 40}, errors={"candidate": {"legal": 40}})
    res, out = _gate(tmp_path, db, "include_overall: false\n" + LATENCY_ONLY)
    assert res.exit_code == 1, res.output
    assert _cases(out / "gate.junit.xml")["(all) :: error_rate"].find("failure") is not None


def test_quality_metric_applying_to_no_prompt_of_a_cohort_is_skipped_not_failed(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", cohorts={"legal": 40, "sql": 40})
    with connect(db) as con:
        con.execute("UPDATE scores SET applicable = false, passed = NULL, score = NULL "
                    "WHERE evaluator = 'task_completion' AND starts_with(prompt_id, 'sql')")
    res, out = _gate(tmp_path, db, QUALITY)
    assert res.exit_code == 0, res.output
    skipped = _cases(out / "gate.junit.xml")["sql :: task_completion.pass_rate"].find("skipped")
    assert "applies to no prompt in cohort sql on either route" in skipped.get("message")


# ------------------------------------------------------------------ runs without data: exit 2

@pytest.mark.parametrize("kind,store_kw,reason", [
    ("empty", {"cohorts": {}}, "the run has no responses"),
    ("all_error", {"cohorts": {"legal": 40}, "errors": {"candidate": {"legal": 40}, "baseline": {"legal": 40}}},
     "every call failed on every route (dense: 40 of 40 calls failed (http_500 x40); moe: 40 of 40"),
    ("baseline_failed", {"cohorts": {"legal": 40}, "errors": {"baseline": {"legal": 40}}},
     "every call to the baseline dense failed, so there is nothing to compare with"),
])
def test_run_without_data_is_no_data_exit_2_in_every_output(tmp_path, kind, store_kw, reason):
    db = deterministic_store(tmp_path / "s.duckdb", **store_kw)
    res, out = _gate(tmp_path, db, QUALITY)   # the quality metric cannot even be named: still "no data", not a name error
    assert res.exit_code == 2, res.output
    assert f"error: no data: {reason}" in res.output and "no such metric" not in res.output
    error = _cases(out / "gate.junit.xml")["data"].find("error")
    assert error.get("type") == "no_data" and reason in error.get("message")
    gate_md = (out / "gate.md").read_text()
    assert "NO DATA" in gate_md and "PASS" not in gate_md

    res, rout = _report(tmp_path, db)
    assert res.exit_code == 2, res.output
    assert f"NO DATA: {reason[0].upper()}{reason[1:]}" in res.output and "No regression found" not in res.output
    md = (rout / "report.md").read_text()
    assert md.splitlines()[2].startswith("**NO DATA** — ") and "PASS" not in md
    assert "<strong>NO DATA</strong>" in _md_html(rout / "report.md")
    page = (rout / "report.html").read_text()
    assert '<p id="headline" class="fail"><b>NO DATA</b>' in page
    data = json.loads((rout / "report.json").read_text())
    jsonschema.validate(data, SCHEMA)
    assert reason in data["no_data"]
    suites = ET.parse(rout / "report.junit.xml").getroot()
    assert suites.find("testsuite").get("errors") == "1"


# ------------------------------------------------------------------ too few prompts

def test_one_prompt_cohort_is_insufficient_never_no_change(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", cohorts={"legal": 40, "tiny": 1})
    report = make_report(db, "run-hand")
    tiny = [c for c in report.comparisons if c.cohort == "tiny"]
    assert tiny and {c.verdict for c in tiny} == {"insufficient"}
    c = next(c for c in tiny if c.metric == "task_completion.pass_rate")
    assert c.note.startswith("1 prompt < min_samples 30") and c.family_size == 0
    assert all(x != x for x in c.diff_ci)    # no zero-width interval from one prompt
    legal = next(c for c in report.comparisons if c.cohort == "legal" and c.metric == "task_completion.pass_rate")
    assert legal.verdict == "no change"
    res, rout = _report(tmp_path, db)
    assert res.exit_code == 0, res.output
    data = json.loads((rout / "report.json").read_text())
    jsonschema.validate(data, SCHEMA)
    # Elsewhere only the p99s are insufficient: 41 prompts have fewer than 3 calls beyond a p99
    thin = [c for c in report.comparisons if c.cohort != "tiny" and c.verdict == "insufficient"]
    assert thin and {c.metric for c in thin} == {"latency_p99_s", "ttft_p99_s"}
    assert all("too few for p99" in c.note and "300 prompts" in c.note for c in thin), [c.note for c in thin]
    assert data["summary"]["insufficient"] == len(tiny) + len(thin)
    html = _md_html(rout / "report.md")
    assert "<td>tiny</td>" in html and "<td>no change</td>" in html
    rows = [r for r in html.split("<tr>") if "<td>tiny</td>" in r]
    assert rows and all("insufficient" in r and "no change" not in r for r in rows)
    assert "(insufficient)" in md_first_line(rout / "report.md")

    res, out = _gate(tmp_path, db, "min_samples: 10\nmetrics:\n  task_completion.pass_rate: {margin: 0.1}\n")
    assert res.exit_code == 0
    assert _cases(out / "gate.junit.xml")["tiny :: task_completion.pass_rate"].find("skipped").get("message") == \
        "insufficient: 1 prompts < min_samples 10"


def md_first_line(path: Path) -> str:
    return path.read_text().splitlines()[2]


def test_every_comparison_insufficient_is_not_a_pass(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", cohorts={"a": 5, "b": 5})
    res, rout = _report(tmp_path, db)
    assert res.exit_code == 0
    assert md_first_line(rout / "report.md").startswith("**INSUFFICIENT** — Too few prompts to judge")
    res, _ = _gate(tmp_path, db, QUALITY.replace("min_samples: 10", "min_samples: 20"))
    assert res.exit_code == 0 and "PASS with nothing shown: no check had enough data to judge" in res.output


# ------------------------------------------------------------------ a crash is never 1

@pytest.mark.parametrize("command,target", [("gate", "harness.gate.evaluate.run_gate"), ("report", "harness.report.build.make_report")])
def test_an_internal_error_exits_3_never_1(tmp_path, monkeypatch, command, target):
    db = deterministic_store(tmp_path / "s.duckdb", cohorts={"legal": 40})

    def boom(*a, **k):
        raise ZeroDivisionError("a bug [/] \x1b[2J")

    monkeypatch.setattr(target, boom)
    (tmp_path / "gate.yaml").write_text(LATENCY_ONLY)
    args = ["--policy", str(tmp_path / "gate.yaml")] if command == "gate" else []
    res = runner.invoke(app, [command, "run-hand", "--db", str(db), "--out-dir", str(tmp_path / "o"), *args])
    assert res.exit_code == 3, res.output
    assert "internal error: ZeroDivisionError: a bug [/] \\x1b[2J (a bug in routecheck; exit code 3)" in res.output
    assert "Traceback" in res.output and "\x1b" not in res.output
