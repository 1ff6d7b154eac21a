"""`routecheck experts`: a real mirror run through stub routes, probed with a tiny Mixtral whose
routing is known by construction, stored in `expert_stats` and read back per cohort."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from conftest import write_corpus, write_routes  # noqa: E402
from harness.cli import app  # noqa: E402
from harness.corpus import read_corpus, with_context  # noqa: E402
from harness.experts.probe import chat_token_ids, load_moe  # noqa: E402
from harness.testing.tiny_moe import WORDS, write_tiny_moe  # noqa: E402

runner = CliRunner()


@pytest.fixture
def probed_run(tmp_path, stub_server):
    tiny = write_tiny_moe(tmp_path / "tiny")
    s = stub_server(answer="cherry coconut")
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "dense", "role": "baseline", "model": "d", "base_url": s.base_url},
        {"name": "moe", "role": "candidate", "model": "m", "base_url": s.base_url, "architecture": "moe",
         "num_experts": 4, "active_experts": 2},
    ])
    rows = [{"id": f"a{i}", "cohort": "apples", "prompt": " ".join(WORDS["a"][: 1 + i % 4])} for i in range(6)]
    rows += [{"id": f"b{i}", "cohort": "berries", "prompt": " ".join(WORDS["b"][: 1 + i % 4])} for i in range(5)]
    corpus = write_corpus(tmp_path / "c.jsonl", rows)
    db = str(tmp_path / "s.duckdb")
    out = runner.invoke(app, ["mirror", "-c", str(corpus), "-r", str(routes), "--db", db, "--no-progress"])
    assert out.exit_code == 0, out.output
    run_id = out.output.split("run ")[1].split(":")[0]
    return tiny, corpus, db, run_id


def _expected_utilisation(tiny, corpus, db, run_id, cohort, layer):
    """Closed form: count each token's known experts over the cohort's prompt + recorded answer."""
    _, tokenizer = load_moe(tiny.path)
    con = duckdb.connect(db, read_only=True)
    answers = dict(con.execute("SELECT prompt_id, text FROM responses WHERE run_id = ? AND route = 'moe'", [run_id]).fetchall())
    con.close()
    counts = np.zeros(tiny.num_experts)
    for rec in read_corpus(corpus):
        if rec.cohort != cohort:
            continue
        ids = chat_token_ids(tokenizer, with_context(rec.request_messages(), None), answers[rec.id])
        for t in ids:
            for e in tiny.experts(t, layer):
                counts[e] += 1
    return counts / counts.sum()


def test_probe_stores_and_reads_back_per_cohort(probed_run):
    tiny, corpus, db, run_id = probed_run
    out = runner.invoke(app, ["experts", run_id, "--db", db, "--json"])
    assert out.exit_code == 2 and "no expert statistics" in out.output  # nothing recorded yet, said plainly

    out = runner.invoke(app, ["experts", run_id, "--db", db, "--model", str(tiny.path), "--json"])
    assert out.exit_code == 0, out.output
    stats = {(s["route"], s["cohort"]): s for s in json.loads(out.stdout[out.stdout.index("["):])}
    assert set(stats) == {("moe", "apples"), ("moe", "berries"), ("moe", "(all)")}  # MoE routes only
    for cohort in ("apples", "berries"):
        s = stats[("moe", cohort)]
        assert s["source"] == "probe" and s["num_experts"] == 4 and s["top_k"] == 2
        for layer in range(tiny.layers):
            want = _expected_utilisation(tiny, corpus, db, run_id, cohort, layer)
            assert np.allclose(s["utilization"]["layers"][layer], want, atol=1e-9), (cohort, layer)
        assert set(s["capacity"]) == {"1.0", "1.25", "1.5", "2.0"}
    # The planted difference is visible: apples load experts 0 and 1 of layer 0, berries 2 and 3.
    a, b = stats[("moe", "apples")]["utilization"]["layers"][0], stats[("moe", "berries")]["utilization"]["layers"][0]
    assert a[0] > b[0] and b[2] > a[2]

    con = duckdb.connect(db, read_only=True)
    n = con.execute("SELECT count(*), count(DISTINCT prompt_id), min(layer), max(layer) FROM expert_stats "
                    "WHERE run_id = ? AND source = 'probe'", [run_id]).fetchone()
    con.close()
    assert n == (11 * tiny.layers, 11, 0, tiny.layers - 1)

    # Probing again replaces, never duplicates; the table view reads what is stored.
    out = runner.invoke(app, ["experts", run_id, "--db", db, "--probe", "--model", str(tiny.path)])
    assert out.exit_code == 0, out.output
    assert "apples" in out.stdout and "berries" in out.stdout and "probe" in out.stdout
    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT count(*) FROM expert_stats").fetchone()[0] == 11 * tiny.layers
    con.close()


def test_bad_arguments_are_one_line_exit_2(probed_run):
    tiny, _, db, run_id = probed_run
    for args, msg in [
        (["--capacity-factors", "1,x"], "--capacity-factors"),
        (["--capacity-factors", "0"], "positive"),
        (["--route", "nope", "--probe"], "no route 'nope'"),
        (["--route", "moe", "--probe"], "no serve.model"),
        (["--model", str(db)], "not a model directory"),
    ]:
        out = runner.invoke(app, ["experts", run_id, "--db", db, *args])
        assert out.exit_code == 2 and msg in out.output, (args, out.output)
    out = runner.invoke(app, ["experts", "no-such-run", "--db", db])
    assert out.exit_code == 2
    out = runner.invoke(app, ["experts", run_id, "--db", db, "--route", "dense", "--model", str(tiny.path)])
    assert out.exit_code == 0, out.output  # a named dense route is probed as asked


def test_report_shows_expert_panels(probed_run, tmp_path):
    from harness.report.build import make_report
    from harness.report.model import Comparison
    from harness.report.render.text import to_markdown

    tiny, _, db, run_id = probed_run
    assert runner.invoke(app, ["experts", run_id, "--db", db, "--model", str(tiny.path)]).exit_code == 0
    out_dir = tmp_path / "rep"
    out = runner.invoke(app, ["report", run_id, "--db", db, "--out-dir", str(out_dir)])
    assert out.exit_code == 0, out.output
    assert "Expert routing per cohort" in out.stdout
    doc = json.loads((out_dir / "report.json").read_text())
    panel = {(p["route"], p["cohort"], p["source"]): p for p in doc["experts"]}
    assert set(panel) == {("moe", "apples", "probe"), ("moe", "berries", "probe"), ("moe", "(all)", "probe")}
    apples = panel[("moe", "apples", "probe")]
    # "rest" is the route's other cohorts pooled: for two cohorts, exactly the other cohort.
    assert apples["rest"] == panel[("moe", "berries", "probe")]["metrics"]
    assert panel[("moe", "(all)", "probe")]["rest"] is None
    md = (out_dir / "report.md").read_text()
    assert "## Expert routing" in md and "| moe | probe | apples |" in md
    page = (out_dir / "report.html").read_text()
    section = page[page.index('id="expert-telemetry"'):]
    assert section.count('class="expert-heatmap"') == 1 and section.count('class="overflow-curve"') == 1
    assert section.count("<svg") == 2 and 'id="expert-table"' in section

    # Beside a regression in a cohort, the cohort's routing against the others (one sentence).
    report = make_report(db, run_id)
    assert not report.regressions()  # the stub routes are identical and unscored: plant one regression row
    report.comparisons.append(Comparison(
        candidate="moe", scope="cohort", cohort="apples", metric="task_completion.pass_rate", kind="quality",
        label="", higher_is_better=True, n_prompts=6, baseline=1.0, baseline_ci=(1, 1), candidate_value=0.5,
        candidate_ci=(0.2, 0.8), diff=-0.5, diff_ci=(-0.8, -0.2), se=0.1, sd_diff=0.3, ci_method="", test="",
        p_value=0.001, p_worse=0.001, family="", family_size=1, p_adjusted=0.001, margin=0.05, margin_spec="",
        verdict="regression", mde=0.1, prompts_needed=None, power_at_margin=0.9))
    md = to_markdown(report)
    line = next(l for l in md.splitlines() if l.startswith("- apples (probe"))
    u_a = apples["metrics"]["utilization_entropy"]
    u_b = apples["rest"]["utilization_entropy"]
    assert f"utilisation entropy {u_a:.2f} vs {u_b:.2f} elsewhere" in line
    assert "overflow at cf 1.25:" in line and "dropped tokens" in line


def test_gate_holds_expert_metrics(probed_run, tmp_path):
    import xml.etree.ElementTree as ET

    tiny, _, db, run_id = probed_run
    out = runner.invoke(app, ["experts", run_id, "--db", db, "--model", str(tiny.path), "--json"])
    stats = {s["cohort"]: s for s in json.loads(out.stdout[out.stdout.index("["):])}
    rate = {c: stats[c]["capacity"]["1.0"]["dropped_token_rate"]["mean"] for c in ("apples", "berries")}
    lo, hi = sorted(rate.values())
    assert lo < hi  # the two cohorts route differently, so a limit between them splits them
    worse = max(rate, key=rate.get)
    policy = tmp_path / "gate.yaml"
    policy.write_text(f"min_samples: 2\ninclude_overall: false\nmetrics:\n  dropped_token_rate@1: {{max: {(lo + hi) / 2}}}\n")
    out_dir = tmp_path / "gate"
    out = runner.invoke(app, ["gate", run_id, "--db", db, "--policy", str(policy), "--out-dir", str(out_dir)])
    assert out.exit_code == 1, out.output
    suite = ET.parse(out_dir / "gate.junit.xml").getroot()
    failed = [tc.get("name") for tc in suite.iter("testcase") if tc.find("failure") is not None]
    assert failed == [f"{worse} :: dropped_token_rate@1"]

    policy.write_text(f"min_samples: 2\nmetrics:\n  dropped_token_rate@1.0: {{max: {hi + 0.01}}}\n")
    out = runner.invoke(app, ["gate", run_id, "--db", db, "--policy", str(policy), "--out-dir", str(out_dir)])
    assert out.exit_code == 0, out.output

    for body, msg in [
        ("dropped_token_rate@1.25: {margin: 0.1}", "absolute limit"),
        ("dropped_token_rate@x: {max: 0.1}", "unknown expert metric"),
        ("latency_p99_s: {max: 3}", "'max'/'min' are for expert routing metrics"),
    ]:
        policy.write_text(f"metrics:\n  {body}\n")
        out = runner.invoke(app, ["gate", run_id, "--db", db, "--policy", str(policy)])
        assert out.exit_code == 2 and msg in out.output, (body, out.output)


def test_report_puts_live_and_probe_side_by_side(probed_run, tmp_path):
    """Two sources for the same responses: each cohort's rows are adjacent (live first), a line says
    how far apart the sources are, and the HTML heatmap has a row per cohort and source."""
    from harness.experts.panel import gap_text

    tiny, _, db, run_id = probed_run
    assert runner.invoke(app, ["experts", run_id, "--db", db, "--model", str(tiny.path)]).exit_code == 0
    con = duckdb.connect(db)
    cols = [c for (c,) in con.execute("SELECT column_name FROM (DESCRIBE expert_stats)").fetchall()]
    sel = ", ".join("'live'" if c == "source" else c for c in cols)
    con.execute(f"INSERT INTO expert_stats SELECT {sel} FROM expert_stats WHERE source = 'probe'")
    # One apples response's layer-0 counts moved by one assignment (expert 0 -> 1) in the live copy.
    pid, counts = con.execute("SELECT prompt_id, counts FROM expert_stats WHERE source = 'live' AND layer = 0 "
                              "AND prompt_id LIKE 'a%' AND counts[1] > 0 ORDER BY prompt_id LIMIT 1").fetchone()
    moved = [counts[0] - 1, counts[1] + 1] + list(counts[2:])
    con.execute("UPDATE expert_stats SET counts = ? WHERE source = 'live' AND layer = 0 AND prompt_id = ?", [moved, pid])
    apples_slots = con.execute("SELECT sum(tokens) * 2 FROM expert_stats WHERE source = 'live' AND layer = 0 "
                               "AND prompt_id LIKE 'a%'").fetchone()[0]
    con.close()

    out_dir = tmp_path / "rep"
    out = runner.invoke(app, ["report", run_id, "--db", db, "--out-dir", str(out_dir)])
    assert out.exit_code == 0, out.output
    md = (out_dir / "report.md").read_text()
    table = [l.split("|")[2:4] for l in md.splitlines() if l.startswith(("| moe | live |", "| moe | probe |"))]
    assert [tuple(c.strip() for c in cells) for cells in table] == [
        ("live", "apples"), ("probe", "apples"), ("live", "berries"), ("probe", "berries"), ("live", "(all)"), ("probe", "(all)")]
    gap = 1 / apples_slots  # one assignment of the apples cohort's layer-0 slots, on two experts
    line = next(l for l in md.splitlines() if l.startswith("- moe: live vs probe"))
    assert f"over 3 cohort rows: utilisation shares within {gap_text(gap)} (largest in apples)" in line
    assert "sources agree: moe: live vs probe" in out.stdout
    page = (out_dir / "report.html").read_text()
    section = page[page.index('id="expert-telemetry"'):]
    assert section.count('class="expert-heatmap"') == 1 and section.count('class="overflow-curve"') == 1
    assert "moe (live, probe): expert utilisation per cohort" in section
    assert all(f"{c} ({s})" in section for c in ("apples", "berries") for s in ("live", "probe"))  # heatmap rows, curves
    assert 'class="expert-agreement"' in section and "live vs probe over 3 cohort rows" in section
