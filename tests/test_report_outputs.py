"""Report outputs: JSON against its schema, JUnit cases, Markdown, self-contained escaped HTML, CLI."""

from __future__ import annotations

import io
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import typer
from rich.console import Console
from typer.testing import CliRunner

from harness.cli.report import report_command
from harness.report.render import print_terminal_report, write_report_files
from harness.testing.synthetic import deterministic_store

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "harness/report/report.schema.json").read_text())
EVIL = '<script>document.title="PWNED"</script><img src=x onerror="document.title=1"> | pipe'


def _files(tmp_path, **kw):
    db = deterministic_store(tmp_path / "s.duckdb", failing={"sql": 20}, failing_text=EVIL, **kw)
    return db, write_report_files(db, "run-hand", tmp_path / "out")


def test_json_matches_documented_schema(tmp_path):
    _, paths = _files(tmp_path, with_server_data=True)
    data = json.loads(paths["json"].read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["summary"]["regression"] == 2  # sql and the pooled (all) row
    assert data["settings"]["correction"].startswith("Holm")
    assert any(w["candidate_text"] == EVIL for w in data["worst_examples"])


def test_junit_one_case_per_cohort_and_metric(tmp_path):
    _, paths = _files(tmp_path)
    data = json.loads(paths["json"].read_text())
    suites = ET.parse(paths["junit"]).getroot().findall("testsuite")
    cases = [c for s in suites for c in s.iter("testcase")]
    assert len(cases) == len(data["comparisons"])
    names = [c.get("name") for c in cases]
    assert len(set(names)) == len(names)
    failures = {c.get("name") for c in cases if c.find("failure") is not None}
    assert failures == {"sql :: task_completion.pass_rate", "(all) :: task_completion.pass_rate"}


def test_markdown_is_a_job_summary(tmp_path):
    _, paths = _files(tmp_path)
    md = paths["md"].read_text()
    assert md.startswith("# routecheck report")
    assert "**FAIL**" in md and "**REGRESSION**" in md and "Holm" in md
    table_lines = [l for l in md.splitlines() if l.startswith("| ")]
    widths = {l.count(" | ") for l in table_lines if "cohort" in l or "sql" in l}
    assert widths  # rows render as table rows
    assert "<script>" not in md


def test_html_is_self_contained_and_escaped(tmp_path):
    _, paths = _files(tmp_path)
    page = paths["html"].read_text()
    assert "<script" not in page.lower().replace("&lt;script", "")
    assert "&lt;script&gt;document.title=&quot;PWNED&quot;&lt;/script&gt;" in page
    assert "onerror=" not in page.replace("onerror=&quot;", "")
    # No fetches: no src/href leaving the document, no stylesheet links, a CSP forbidding them.
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#|data:)""", page)
    assert "<link" not in page and "default-src 'none'" in page
    assert 'id="forest-plot"' in page and "<svg" in page and 'id="latency-cdf"' in page
    assert 'id="cost-quality"' in page and 'id="expert-telemetry"' in page and 'id="worst-examples"' in page


def test_terminal_report_and_cli(tmp_path):
    db, _ = _files(tmp_path)
    buf = io.StringIO()
    report = print_terminal_report(db, "run-hand", console=Console(file=buf, width=200))
    text = buf.getvalue()
    assert "REGRESSION" in text and "sql" in text and report.regressions()
    app = typer.Typer()
    app.command()(report_command)
    res = CliRunner().invoke(app, ["run-hand", "--db", str(db), "--out-dir", str(tmp_path / "cli"), "--formats", "md,json"])
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["report.json", "report.md"]
    res = CliRunner().invoke(app, ["run-hand", "--db", str(db), "--formats", "pdf"])
    assert res.exit_code == 2 and "--formats" in res.output
    res = CliRunner().invoke(app, ["latest", "--db", str(db), "--out-dir", str(tmp_path / "l"), "--quiet"])
    assert res.exit_code == 0 and (tmp_path / "l" / "report.html").exists()


def test_report_with_policy_uses_its_margins_and_checks_its_names(tmp_path):
    db, _ = _files(tmp_path)
    pol = tmp_path / "gate.yaml"
    pol.write_text("metrics:\n  task_completion.pass_rate: {margin: 0.7}\n")
    app = typer.Typer()
    app.command()(report_command)
    res = CliRunner().invoke(app, ["run-hand", "--db", str(db), "--policy", str(pol), "--out-dir", str(tmp_path / "p"), "--quiet"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "p" / "report.json").read_text())
    sql = next(c for c in data["comparisons"] if c["cohort"] == "sql" and c["metric"] == "task_completion.pass_rate")
    # -0.5 [-0.65, -0.35] is significant, but the whole CI is inside a margin of 0.7: "no change".
    assert sql["margin"] == 0.7 and sql["verdict"] == "no change"
    pol.write_text("metrics:\n  nope.score: {margin: 0.1}\n")
    res = CliRunner().invoke(app, ["run-hand", "--db", str(db), "--policy", str(pol), "--quiet"])
    assert res.exit_code == 2 and "metrics.nope.score" in res.output


def test_hostile_cohort_names_are_escaped_everywhere(tmp_path):
    cohorts = {"<script>alert(1)</script>": 30, "price $5 or $6 | tier": 30, "plain": 30}
    db = deterministic_store(tmp_path / "s.duckdb", cohorts=cohorts, failing={"<script>alert(1)</script>": 20})
    paths = write_report_files(db, "run-hand", tmp_path / "out")
    page = paths["html"].read_text()
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "price $5 or $6 | tier" in page            # literal in the SVG text, not mathtext
    md = paths["md"].read_text()
    assert "\\<script\\>alert(1)\\</script\\>" in md and "price \\$5 or \\$6 \\| tier" in md  # escape.markdown
    ET.parse(paths["junit"])                          # still well-formed XML
