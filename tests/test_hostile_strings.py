"""Untrusted strings are data, everywhere (issue 18, item 5).

Run ids, prompt ids, route and cohort names, policy keys, error messages and model output carry
rich markup, ANSI/OSC escapes, C0/C1 controls, bidi overrides, Markdown link/image syntax, HTML
and XML-illegal characters. Every command runs on them (none may crash: exit codes are the
documented ones), and each real output is read back the way its consumer reads it: the terminal
capture, the JUnit with an XML parser, the Markdown rendered to HTML by markdown-it, the HTML in
headless Chromium, the JSON (where the strings must survive exactly).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt
from typer.testing import CliRunner

from harness.cli import app
from harness.cli.console import err, out
from harness.config import key_text
from harness.report.render.escape import filename, markdown, visible
from harness.testing.synthetic import deterministic_store

HOSTILE = {
    "markup": "[/]m[bold red]x[/bold red][link=http://evil.example]l[/link] :thumbs_up:",
    "ansi": "\x1b[31mred\x1b[0m\x1b]8;;http://evil.example\x1b\\osc\x1b]8;;\x1b\\\x1b[2J",
    "control": "c\x00\x07\x08\x0b\x0c\rPASS\x7f\x85\x9b31m\t\n",
    "bidi": "\u202egnp.exe\u2066x\u2069",
    "markdown": "![img](http://evil.example/i.png) [lnk](http://evil.example) <http://evil.example/a> *em* _u_ "
                "`code` ~~del~~ | pipe $x^2$ a@evil.example www.evil.example # h",
    "html": "<script>document.title='PWNED'</script><img src=x onerror=\"document.title='PWNED2'\">&amp;",
    "xml": "]]><!--\ufffe\uffff-->",
}
RUN_ID = "run " + HOSTILE["markup"] + HOSTILE["ansi"] + HOSTILE["html"] + HOSTILE["markdown"][:40]
BASELINE = "base " + HOSTILE["markup"][:20] + HOSTILE["ansi"][:15]
CANDIDATE = "cand " + HOSTILE["markdown"][:36] + HOSTILE["control"][:8]
ERROR_MESSAGE = "upstream said: " + HOSTILE["ansi"] + HOSTILE["control"] + HOSTILE["html"]
MODEL_TEXT = HOSTILE["html"] + HOSTILE["markdown"] + HOSTILE["ansi"] + "\nsecond line"
N = 30
# Raw control characters that must never reach a terminal, a CI log or an XML file.
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ufffe\uffff]")
FORBIDDEN_TAGS = {"img", "a", "script", "code", "em", "del", "s", "iframe", "h3", "h4", "blockquote", "ol", "hr"}

runner = CliRunner()


@pytest.fixture
def wide(monkeypatch):
    """Wide consoles, so table cells are not folded across lines and names can be found whole."""
    monkeypatch.setattr(out, "width", 4000)
    monkeypatch.setattr(err, "width", 4000)


@pytest.fixture
def hostile_store(tmp_path: Path) -> Path:
    cohorts = {name: N for name in HOSTILE.values()}
    ids = [f"p{i:03d} {v}" for i, v in enumerate(v for v in HOSTILE.values() for _ in range(N))]
    return deterministic_store(
        tmp_path / "hostile.duckdb", cohorts=cohorts, run_id=RUN_ID, baseline=BASELINE, candidate=CANDIDATE,
        prompt_ids=ids, failing={HOSTILE["html"]: 20}, failing_text=MODEL_TEXT,
        errors={"candidate": {HOSTILE["xml"]: N}}, error_message=ERROR_MESSAGE)


def _run(*args: object, code: int | set[int] = 0):
    res = runner.invoke(app, [str(a) for a in args])
    codes = {code} if isinstance(code, int) else code
    assert res.exit_code in codes, (args, res.exit_code, res.output[-3000:], res.exception)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output and "MarkupError" not in res.output
    bad = RAW_CONTROL.findall(res.output)
    assert not bad, f"raw control characters reached the terminal: {sorted(set(bad))!r}"
    return res


def _assert_shows(output: str, *strings: str) -> None:
    """Each string is in the terminal output as itself, its control characters as visible escapes."""
    for s in strings:
        assert visible(s) in output, (visible(s), output[-2000:])


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cells: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _render_markdown(path: Path) -> _Tags:
    html = MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(path.read_text(encoding="utf-8"))
    parsed = _Tags()
    parsed.feed(html)
    return parsed


def _policy(tmp_path: Path, body: dict) -> Path:
    path = tmp_path / "gate.yaml"
    path.write_text(yaml.safe_dump(body, allow_unicode=False))  # YAML escapes the control characters
    return path


def test_every_command_prints_hostile_names_as_text(tmp_path, hostile_store, wide):
    db = hostile_store
    res = _run("runs", "--db", db)
    _assert_shows(res.output, RUN_ID[:60])
    res = _run("runs", "--db", db, "--detail", "latest")
    _assert_shows(res.output, BASELINE, CANDIDATE)
    res = _run("sql", "SELECT DISTINCT cohort, route, error_message FROM responses WHERE error_message IS NOT NULL", "--db", db)
    _assert_shows(res.output, HOSTILE["xml"], CANDIDATE, ERROR_MESSAGE)
    res = _run("sql", f"SELECT 1 AS \"{HOSTILE['markup']}\", '{HOSTILE['ansi']}' AS x", "--db", db)
    _assert_shows(res.output, HOSTILE["markup"], HOSTILE["ansi"])
    res = _run("sql", "SELECT nonsense FROM nowhere [/] \x1b[2J", "--db", db, code=2)
    assert "query failed" in res.output
    res = _run("experts", "latest", "--db", db, code=2)   # no statistics: a one-line error naming the run
    _assert_shows(res.output, RUN_ID)

    res = _run("report", "latest", "--db", db, "--out-dir", tmp_path / "rep")
    _assert_shows(res.output, f"{CANDIDATE} vs {BASELINE}", *HOSTILE.values())
    assert "REGRESSION" in res.output

    policy = _policy(tmp_path, {"min_samples": 10, "metrics": {"task_completion.pass_rate": {"margin": 0.1}},
                                "cohorts": {HOSTILE["markdown"]: {"*": {"margin": 0.2}}, HOSTILE["ansi"]: {"*": {"enabled": False}}}})
    res = _run("gate", "latest", "--db", db, "--policy", policy, "--out-dir", tmp_path / "gate", code=1)
    _assert_shows(res.output, RUN_ID, *HOSTILE.values())
    # A hostile policy key: one line naming it (visible), exit 2.
    bad = _policy(tmp_path, {"metrics": {HOSTILE["markup"] + HOSTILE["ansi"]: {"margin": 0.1}}})
    res = _run("gate", "latest", "--db", db, "--policy", bad, code=2)
    # (a key with control characters is quoted, harness/config.py key_text, and shown visibly)
    assert f"metrics.{visible(key_text(HOSTILE['markup'] + HOSTILE['ansi']))}: no such metric" in res.output
    bad = _policy(tmp_path, {"metrics": {"latency_p99_s": {HOSTILE["markup"]: 1}}})
    res = _run("gate", "latest", "--db", db, "--policy", bad, code=2)
    assert "unknown key" in res.output


def test_junit_parses_and_keeps_every_name(tmp_path, hostile_store):
    policy = _policy(tmp_path, {"min_samples": 10, "metrics": {"task_completion.pass_rate": {"margin": 0.1}}})
    _run("report", "latest", "--db", hostile_store, "--out-dir", tmp_path / "o", "--quiet")
    _run("gate", "latest", "--db", hostile_store, "--policy", policy, "--out-dir", tmp_path / "o", code=1)
    for name in ("report.junit.xml", "gate.junit.xml"):
        path = tmp_path / "o" / name
        assert not RAW_CONTROL.search(path.read_text(encoding="utf-8"))
        root = ET.parse(path).getroot()                       # well-formed XML 1.0
        cases = {c.get("name") for c in root.iter("testcase")}
        for cohort in HOSTILE.values():
            assert f"{visible(cohort, multiline=True)} :: error_rate" in cases, (name, cohort)
        failures = [f.get("message") for f in root.iter("failure")]
        assert failures, name
    gate = ET.parse(tmp_path / "o" / "gate.junit.xml").getroot()
    assert gate.find("testsuite").get("name") == f"routecheck gate {visible(RUN_ID, multiline=True)}"
    suites = {s.get("name") for s in ET.parse(tmp_path / "o" / "report.junit.xml").getroot().iter("testsuite")}
    assert f"{visible(CANDIDATE, multiline=True)} vs {visible(BASELINE, multiline=True)}" in suites


def test_markdown_renders_hostile_names_as_plain_text(tmp_path, hostile_store):
    policy = _policy(tmp_path, {"min_samples": 10, "metrics": {"task_completion.pass_rate": {"margin": 0.1}}})
    _run("report", "latest", "--db", hostile_store, "--out-dir", tmp_path / "o", "--quiet")
    _run("gate", "latest", "--db", hostile_store, "--policy", policy, "--out-dir", tmp_path / "o", code=1)
    for name in ("report.md", "gate.md"):
        path = tmp_path / "o" / name
        raw = path.read_text(encoding="utf-8")
        assert not RAW_CONTROL.search(raw)
        assert "http\\://evil.example" in raw and "www\\.evil" in raw and "\\$x^2\\$" in raw  # GFM autolinks, math
        doc = _render_markdown(path)
        tags = {t for t, _ in doc.tags}
        assert not tags & FORBIDDEN_TAGS, (name, tags & FORBIDDEN_TAGS)
        assert [t for t, _ in doc.tags].count("h1") == 1   # our title; no heading from a name
        assert not [a for _, a in doc.tags if any(k.startswith("on") or k in ("src", "href") for k in a)]
        cells = set(doc.cells)  # HTMLParser has decoded the character references once
        for cohort in HOSTILE.values():                      # each cohort cell reads back as the name itself
            assert visible(cohort) in cells, (name, visible(cohort))
        assert visible(CANDIDATE) in cells
    headings = [line for line in (tmp_path / "o" / "report.md").read_text().splitlines() if line.startswith("#")]
    assert headings[0] == f"# routecheck report: run {markdown(RUN_ID)}"
    assert all(line.startswith(("# ", "## ")) for line in headings)   # no heading smuggled in by a name


def test_json_keeps_the_strings_exactly(tmp_path, hostile_store):
    _run("report", "latest", "--db", hostile_store, "--out-dir", tmp_path / "o", "--quiet")
    data = json.loads((tmp_path / "o" / "report.json").read_text(encoding="utf-8"))
    assert data["run_id"] == RUN_ID and data["baseline"] == BASELINE and data["candidates"] == [CANDIDATE]
    assert set(data["cohorts"]) == set(HOSTILE.values())
    assert {w["candidate_text"] for w in data["worst_examples"]} == {MODEL_TEXT}


def test_default_output_folder_is_a_safe_name(tmp_path, hostile_store, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _run("report", "latest", "--db", hostile_store, "--quiet")
    made = [p for p in (tmp_path / "reports").iterdir()]
    assert made == [tmp_path / "reports" / filename(RUN_ID)] and (made[0] / "report.html").exists()
    assert set(filename(RUN_ID)) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
    assert filename("..") not in ("..", ".") and filename("") != ""


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_html_in_chromium_shows_hostile_strings_as_text(tmp_path, hostile_store):
    _run("report", "latest", "--db", hostile_store, "--out-dir", tmp_path / "o", "--quiet")
    page = tmp_path / "o" / "report.html"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    res = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    dom = res.stdout
    assert "</body>" in dom, res.stderr[-2000:]
    # No script ran (the title is ours), no element came from the data, no control character survived.
    title = unescape(re.search(r"<title>(.*?)</title>", dom, re.S).group(1))
    assert title == f"routecheck report {visible(RUN_ID)}"
    body = dom[dom.index("<body"):]
    for tag in ("<img", "<script", "<a ", "<iframe"):
        assert tag not in body, tag
    assert not RAW_CONTROL.search(dom)
    # The strings are there as text: cohort cells, route names and the model output in <pre>.
    text = unescape(re.sub(r"<[^>]+>", "\x00", body))
    for cohort in HOSTILE.values():
        assert visible(cohort) in text, visible(cohort)
    assert visible(CANDIDATE) in text and visible(BASELINE) in text
    assert visible(MODEL_TEXT, multiline=True) in text
    assert visible(HOSTILE["markdown"]) in text  # in the SVG tick labels too: "$x^2$" stays literal, not mathtext


def test_mirror_and_report_on_hostile_corpus_and_model_output(tmp_path, stub_server, wide):
    """Through the real runner: cohorts and prompt ids from the corpus, text from the server."""
    from conftest import write_corpus, write_routes

    evil_answer = HOSTILE["html"] + HOSTILE["ansi"] + HOSTILE["markdown"]
    dense = stub_server(answer="fine")
    moe = stub_server(answer="fine", answers={"[legal": evil_answer}, fail_on={"[x": 500})
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "dense", "role": "baseline", "model": "dense", "base_url": dense.base_url, "max_retries": 0},
        {"name": "moe", "role": "candidate", "model": "moe", "base_url": moe.base_url, "max_retries": 0},
    ])
    cohorts = [HOSTILE["markup"], HOSTILE["ansi"], "[legal" + HOSTILE["control"], "[x" + HOSTILE["xml"]]
    corpus = write_corpus(tmp_path / "c.jsonl", [
        {"id": f"{cohorts[i % 4]}#{i}", "cohort": cohorts[i % 4], "prompt": f"{cohorts[i % 4][:6]} question {i}"}
        for i in range(40)])
    db = tmp_path / "m.duckdb"
    res = _run("mirror", "-c", corpus, "-r", routes, "--db", db, "--no-progress")
    assert "completed" in res.output
    res = _run("sql", "SELECT count(*) FILTER (WHERE error_type IS NOT NULL) AS e, count(*) AS n FROM measured_responses", "--db", db)  # warm-up calls stored apart
    assert re.search(r"\b10\b.*\b80\b", res.output), res.output   # the "[x" cohort failed on moe, nothing lost
    (tmp_path / "g.yaml").write_text("min_samples: 5\nmetrics:\n  latency_p99_s: {margin_rel: 5}\n")
    res = _run("report", "latest", "--db", db, "--out-dir", tmp_path / "o", "--policy", tmp_path / "g.yaml")
    _assert_shows(res.output, cohorts[3])   # the terminal shows the regressed cohort's row (its error rate)
    res = _run("gate", "latest", "--db", db, "--policy", tmp_path / "g.yaml", "--out-dir", tmp_path / "o", code=1)
    root = ET.parse(tmp_path / "o" / "gate.junit.xml").getroot()
    failed = {c.get("name") for c in root.iter("testcase") if c.find("failure") is not None}
    assert f"{visible(cohorts[3], multiline=True)} :: error_rate" in failed
    for md in ("report.md", "gate.md"):
        doc = _render_markdown(tmp_path / "o" / md)
        assert not {t for t, _ in doc.tags} & FORBIDDEN_TAGS
        assert {visible(c) for c in cohorts} <= set(doc.cells), md
