"""`routecheck gate`: exit codes, policy errors naming file and key, Markdown and JUnit outputs."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
import typer
from typer.testing import CliRunner

from harness.cli.gate import gate_command
from harness.report.policy import load_policy
from harness.testing.synthetic import deterministic_store
from harness.config import ConfigError

app = typer.Typer()
app.command()(gate_command)
runner = CliRunner()

POLICY = """
alpha: 0.05
min_samples: 20
metrics:
  task_completion.pass_rate: {margin: 0.10}
  latency_p99_s: {margin_rel: 0.5}
cohorts:
  chat:
    "*": {enabled: false}
"""


def _gate(tmp_path, db, policy_text=POLICY, run="run-hand"):
    pol = tmp_path / "gate.yaml"
    pol.write_text(policy_text)
    out = tmp_path / "out"
    res = runner.invoke(app, [run, "--db", str(db), "--policy", str(pol), "--out-dir", str(out)])
    return res, out


def test_regression_exits_1_and_writes_junit_failure(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", failing={"sql": 20})
    res, out = _gate(tmp_path, db)
    assert res.exit_code == 1, res.output
    suite = ET.parse(out / "gate.junit.xml").getroot().find("testsuite")
    failed = {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None}
    assert failed == {"(all) :: task_completion.pass_rate", "sql :: task_completion.pass_rate"}
    skipped = {c.get("name") for c in suite.iter("testcase") if c.find("skipped") is not None}
    assert "chat :: task_completion.pass_rate" in skipped      # disabled for chat by the policy
    md = (out / "gate.md").read_text()
    assert "**REGRESSION**" in md and "false-alarm bound" in md and "FAIL" in md


def test_no_effect_passes_with_exit_0(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb")
    res, out = _gate(tmp_path, db)
    assert res.exit_code == 0, res.output
    assert "PASS" in (out / "gate.md").read_text()
    suite = ET.parse(out / "gate.junit.xml").getroot().find("testsuite")
    assert suite.get("failures") == "0"


def test_insufficient_samples_fail_only_when_asked(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", cohorts={"a": 10, "b": 10})
    warn = "min_samples: 30\nmetrics:\n  task_completion.pass_rate: {margin: 0.1}\n"
    res, _ = _gate(tmp_path, db, warn)
    assert res.exit_code == 0 and "insufficient" in res.output
    res, _ = _gate(tmp_path, db, warn + "on_insufficient: fail\n")
    assert res.exit_code == 1


@pytest.mark.parametrize("text,expected", [
    ("metrics:\n  task_completion.pass_rate: {margn: 0.1}\n", "metrics.task_completion.pass_rate.margn: unknown key"),
    ("metrics:\n  nope.pass_rate: {margin: 0.1}\n", "metrics.nope.pass_rate: no such metric"),
    ("metrics:\n  task_completion.pass_rate: {margin: -1}\n", "metrics.task_completion.pass_rate.margin"),
    ("metrics: [oops\n", "not valid YAML"),
    ("alpha: 0.05\n", "metrics: required key is missing"),
    ("metrics:\n  task_completion.pass_rate: {margin: 0.1}\ncohorts:\n  nowhere: {}\n", "cohorts.nowhere: no such cohort"),
])
def test_bad_policy_exits_2_naming_file_and_key(tmp_path, text, expected):
    db = deterministic_store(tmp_path / "s.duckdb")
    res, _ = _gate(tmp_path, db, text)
    assert res.exit_code == 2, res.output
    assert "gate.yaml" in res.output and expected in res.output


def test_unknown_run_and_missing_store_exit_2(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb")
    res, _ = _gate(tmp_path, db, run="no-such-run")
    assert res.exit_code == 2 and "no-such-run" in res.output
    res, _ = _gate(tmp_path, tmp_path / "missing.duckdb")
    assert res.exit_code == 2 and "missing.duckdb" in res.output


def test_example_policy_in_repo_is_valid():
    from pathlib import Path

    policy = load_policy(Path(__file__).resolve().parents[1] / "gate.yaml")
    margin, relative, alpha, min_samples, enabled = policy.rule("task_completion.pass_rate", "legal")
    assert (margin, relative, alpha, enabled) == (0.03, False, 0.02, True)
    with pytest.raises(ConfigError):
        load_policy(Path("/nonexistent/gate.yaml"))


def test_policy_may_gate_a_score_that_repeats_pass_fail(tmp_path):
    """task_completion.score equals its pass/fail bit here; the report hides it, but a policy may still name it."""
    db = deterministic_store(tmp_path / "s.duckdb", failing={"sql": 20})
    res, out = _gate(tmp_path, db, "metrics:\n  task_completion.score: {margin: 0.1}\n")
    assert res.exit_code == 1, res.output
    assert "sql :: task_completion.score" in (out / "gate.junit.xml").read_text()
