"""Every bad input through the real CLI: exit 2, one `error:` line naming the file and the line or
key, no traceback (issue 18, "Every bad input is one clear line and exit 2").

Corpus, routes.yaml, gate.yaml, evaluators.yaml, --db and run ids. The mirror cases point at a
port nothing listens on: every input is checked before a request is sent, so none is.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from conftest import REPO, write_corpus, write_routes
from harness.cli import app
from harness.testing.synthetic import SyntheticSpec, build_store

runner = CliRunner()
DEAD_URL = "http://127.0.0.1:9/v1"  # discard port: a call would fail, but none must be made


def invoke(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def assert_bad_input(result, *needles: str) -> str:
    """Exit 2, no traceback, exactly one non-empty stderr line, `error: ...` holding every needle."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "internal error" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture
def routes(tmp_path: Path) -> Path:
    return write_routes(tmp_path / "routes.yaml", [
        {"name": "base", "role": "baseline", "model": "a", "base_url": DEAD_URL, "max_retries": 0, "timeout_s": 1},
        {"name": "cand", "role": "candidate", "model": "b", "base_url": DEAD_URL, "max_retries": 0, "timeout_s": 1},
    ])


def mirror(corpus: Path, routes: Path, db: Path, *extra: str, env: dict[str, str] | None = None):
    return invoke("mirror", "-c", str(corpus), "-r", str(routes), "--db", str(db), "--no-progress", "--warmup", "0", *extra, env=env)


def good_rows(n: int = 3) -> list[dict]:
    return [{"id": f"p{i}", "cohort": "c", "prompt": "hi"} for i in range(n)]


def _assert_no_run(db: Path) -> None:
    """Nothing was started: no store, or a store without runs."""
    if db.exists():
        with duckdb.connect(str(db), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


# -- the corpus --------------------------------------------------------------------------------

def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _jsonl(rows: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _deep(depth: int) -> str:
    return '{"id": "d", "prompt": "x", "metadata": {"m": ' + "[" * depth + "]" * depth + "}}"


def _parquet_with_garbage(path: Path) -> Path:
    return _write(path, b"PAR1" + os.urandom(2000) + b"PAR1")


CORPUS_CASES = {
    # name: (file name, content or None for "do not create", expected pieces of the error line)
    "missing file": ("none.jsonl", None, ["none.jsonl: corpus file not found"]),
    "directory": ("dir.jsonl", "DIR", ["dir.jsonl: is a directory"]),
    "binary": ("bin.jsonl", b"\x00\x01\x02\xff\xfe" * 100, ["bin.jsonl: binary data"]),
    "utf-16": ("u16.jsonl", _jsonl(good_rows()).encode("utf-16"), ["u16.jsonl: UTF-16 text"]),
    "gzip named .jsonl": ("gz.jsonl", gzip.compress(_jsonl(good_rows()).encode()), ["gz.jsonl: gzip-compressed"]),
    "gzip by name": ("c.jsonl.gz", gzip.compress(_jsonl(good_rows()).encode()), ["c.jsonl.gz: a compressed file"]),
    "invalid utf-8 mid-file": ("mid.jsonl", _jsonl(good_rows(2)).encode() + b'{"id": "x", "prompt": "caf\xe9"}\n',
                               ["mid.jsonl:3: not valid UTF-8 (byte 0xe9"]),
    "deep nesting (parser)": ("deep.jsonl", _jsonl(good_rows(1)) + _deep(100_000) + "\n", ["deep.jsonl:2: nested too deeply"]),
    "deep nesting (values)": ("deep2.jsonl", _deep(150) + "\n", ["deep2.jsonl:1: metadata: nested deeper than 100 levels"]),
    "NaN": ("nan.jsonl", '{"id": "n", "prompt": "x", "metadata": {"v": NaN}}\n', ["nan.jsonl:1: not valid JSON (NaN is not JSON"]),
    "lone surrogate": ("sur.jsonl", '{"id": "s", "prompt": "a\\ud800b"}\n', ["sur.jsonl:1: prompt: a lone UTF-16 surrogate"]),
    "huge integer": ("int.jsonl", '{"id": "i", "prompt": "x", "metadata": {"v": ' + "9" * 5000 + "}}\n", ["int.jsonl:1: not valid JSON"]),
    "array line": ("arr.jsonl", "[1, 2]\n", ["arr.jsonl:1: expected a JSON object per line, got list"]),
    "bad json": ("bad.jsonl", _jsonl(good_rows(1)) + '{"id": \n', ["bad.jsonl:2: not valid JSON"]),
    "empty file": ("empty.jsonl", "", ["empty.jsonl: no valid rows"]),
    "csv invalid utf-8": ("bad.csv", b"id,prompt\np1,hi\np2,caf\xe9\n", ["bad.csv:3: prompt: not valid UTF-8 (byte 0xe9)"]),
    "csv extra fields": ("extra.csv", "id,prompt\np1,hi,surplus\n", ["extra.csv:2: 1 more field(s) than the header has"]),
    "fake parquet": ("fake.parquet", "id,prompt\np1,hi\n", ["fake.parquet: not a Parquet file"]),
    "parquet with a garbage body": ("junk.parquet", "GARBAGE", ["junk.parquet: not a readable Parquet file"]),
    "unknown format": ("c.txt", "hello", ["c.txt: unknown corpus format '.txt'"]),
}


@pytest.mark.parametrize("case", sorted(CORPUS_CASES))
def test_bad_corpus(tmp_path, routes, case):
    name, content, needles = CORPUS_CASES[case]
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif content == "GARBAGE":
        _parquet_with_garbage(path)
    elif content is not None:
        _write(path, content)
    db = tmp_path / "s.duckdb"
    assert_bad_input(mirror(path, routes, db), *needles)
    _assert_no_run(db)


def test_csv_field_over_128_kib_is_read_and_one_over_the_limit_is_one_line(tmp_path, routes, monkeypatch):
    from harness import corpus as corpus_module

    big = "x" * (200 * 1024)  # over Python csv's default 128 KiB field limit
    path = _write(tmp_path / "big.csv", f"id,prompt,context\np1,hi,{big}\n")
    records = list(corpus_module.read_corpus(path))
    assert [len(r.context) for r in records] == [len(big)]
    monkeypatch.setattr(corpus_module, "MAX_CSV_FIELD", 100 * 1024)
    assert_bad_input(mirror(path, routes, tmp_path / "s.duckdb"), "big.csv:2: not valid CSV (a field is larger than")


def test_unknown_cohort_is_named(tmp_path, routes):
    corpus = write_corpus(tmp_path / "c.jsonl", good_rows())
    assert_bad_input(mirror(corpus, routes, tmp_path / "s.duckdb", "--cohort", "nope"),
                     "c.jsonl: no rows in cohort(s) 'nope' (--cohort); the corpus has: c")


def test_skip_invalid_still_counts_and_runs_nothing_when_every_row_is_bad(tmp_path, routes):
    path = _write(tmp_path / "all-bad.jsonl", "[1]\n[2]\n")
    line = assert_bad_input(mirror(path, routes, tmp_path / "s.duckdb", "--skip-invalid"), "all-bad.jsonl: no valid rows")
    assert "2 invalid rows skipped" in line and "all-bad.jsonl:1: expected a JSON object" in line


# -- routes.yaml -------------------------------------------------------------------------------

ROUTES_CASES = {
    "base_url not a url": ("routes:\n  - {name: base, role: baseline, model: a, base_url: not a url}\n"
                           "  - {name: cand, role: candidate, model: b, base_url: 'http://127.0.0.1:9/v1'}\n",
                           ["routes.yaml: routes[0].base_url (route 'base'): expected an http(s) URL", "got 'not a url'"]),
    "base_url without host": ("routes:\n  - {name: base, role: baseline, model: a, base_url: 'http:///v1'}\n"
                              "  - {name: cand, role: candidate, model: b, base_url: 'http://127.0.0.1:9/v1'}\n",
                              ["routes[0].base_url (route 'base'): expected an http(s) URL"]),
    "base_url bad port": ("routes:\n  - {name: base, role: baseline, model: a, base_url: 'http://h:99999/v1'}\n"
                          "  - {name: cand, role: candidate, model: b, base_url: 'http://127.0.0.1:9/v1'}\n",
                          ["routes[0].base_url (route 'base')"]),
    "duplicate key": ("routes:\n  - name: base\n    role: baseline\n    model: a\n    model: b\n    base_url: 'http://x/v1'\n",
                      ["routes.yaml:5: not valid YAML: duplicate key 'model'"]),
    "broken yaml": ("routes:\n  - {name: base\n", ["routes.yaml:3: not valid YAML"]),
    "unknown key": ("routes:\n  - {name: base, role: baseline, model: a, base_url: 'http://x/v1', colour: red}\n"
                    "  - {name: cand, role: candidate, model: b, base_url: 'http://x/v1'}\n",
                    ["routes.yaml: routes[0].colour (route 'base'): unknown key"]),
    "routes not a list": ("routes: 5\n", ["routes.yaml: routes: Input should be a valid list"]),
    "a scalar": ("just text\n", ["routes.yaml: expected a mapping with a 'routes' list, got str"]),
    "control character": ("routes:\n  - name: a\x01b\n", ["routes.yaml:2: not valid YAML: unacceptable character"]),
    "not utf-8": (b"routes:\n  - name: caf\xe9\n", ["routes.yaml:2: not UTF-8 text (byte 0xe9)"]),
    "gzip": (gzip.compress(b"routes: []\n"), ["routes.yaml: gzip-compressed"]),
    "unknown engine": ("routes:\n  - {name: a, role: baseline, model: m, serve: {engine: nope, model: x}}\n"
                       "  - {name: b, role: candidate, model: m, base_url: 'http://127.0.0.1:9/v1'}\n",
                       ["routes.yaml: routes[0].serve.engine (route 'a'): unknown serving engine 'nope'; known: vllm"]),
}


@pytest.mark.parametrize("case", sorted(ROUTES_CASES))
def test_bad_routes(tmp_path, case):
    text, needles = ROUTES_CASES[case]
    routes = _write(tmp_path / "routes.yaml", text)
    corpus = write_corpus(tmp_path / "c.jsonl", good_rows())
    db = tmp_path / "s.duckdb"
    assert_bad_input(mirror(corpus, routes, db), *needles)
    _assert_no_run(db)


def test_routes_file_is_a_directory(tmp_path):
    (tmp_path / "routes.yaml").mkdir()
    corpus = write_corpus(tmp_path / "c.jsonl", good_rows())
    assert_bad_input(mirror(corpus, tmp_path / "routes.yaml", tmp_path / "s.duckdb"), "routes.yaml: is a directory")


@pytest.mark.parametrize("value, state", [(None, "is not set"), ("", "is empty")])
def test_unset_api_key_is_an_error_up_front_not_a_run_left_running(tmp_path, value, state):
    routes = write_routes(tmp_path / "routes.yaml", [
        {"name": "base", "role": "baseline", "model": "a", "base_url": DEAD_URL},
        {"name": "cand", "role": "candidate", "model": "b", "base_url": DEAD_URL, "api_key_env": "RC_TEST_ROUTE_KEY"},
    ])
    corpus = write_corpus(tmp_path / "c.jsonl", good_rows())
    env = {"RC_TEST_ROUTE_KEY": value} if value is not None else {}
    os.environ.pop("RC_TEST_ROUTE_KEY", None)
    db = tmp_path / "s.duckdb"
    assert_bad_input(mirror(corpus, routes, db, env=env),
                     f"routes.yaml: routes[1].api_key_env (route 'cand'): environment variable RC_TEST_ROUTE_KEY {state}")
    _assert_no_run(db)


def test_runner_reads_keys_before_the_run_row(tmp_path):
    """The library path (run_mirror without the CLI's check) fails before any run row too."""
    from harness.config import ConfigError, load_routes
    from harness.mirror.runner import MirrorOptions, run_mirror

    routes = load_routes(write_routes(tmp_path / "routes.yaml", [
        {"name": "base", "role": "baseline", "model": "a", "base_url": DEAD_URL, "api_key_env": "RC_TEST_UNSET_KEY_2"},
        {"name": "cand", "role": "candidate", "model": "b", "base_url": DEAD_URL},
    ]))
    os.environ.pop("RC_TEST_UNSET_KEY_2", None)
    db = tmp_path / "s.duckdb"
    corpus = write_corpus(tmp_path / "c.jsonl", good_rows())
    with pytest.raises(ConfigError, match="RC_TEST_UNSET_KEY_2"):
        run_mirror(routes, MirrorOptions(corpus=corpus, db=db, warmup=0))
    if db.exists():  # keys are read before the store is opened, so there may be no store at all
        with duckdb.connect(str(db), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


# -- a store with a run, for gate.yaml, evaluators.yaml, --db and run ids ----------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "s.duckdb"
    build_store(path, SyntheticSpec(cohorts={"legal": 12, "sql": 12}, run_id="run-good"))
    return path


def _copy_store(store: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "copy.duckdb"
    dest.write_bytes(store.read_bytes())
    return dest


GATE_CASES = {
    "unknown key": ("metrics:\n  latency_p99_s: {margn: 0.1}\n", ["gate.yaml: metrics.latency_p99_s.margn: unknown key"]),
    "wrong type": ("alpha: lots\nmetrics:\n  error_rate: {}\n", ["gate.yaml: alpha: Input should be a valid number"]),
    "out of range": ("alpha: 0.9\nmetrics:\n  error_rate: {}\n", ["gate.yaml: alpha: Input should be less than 0.5"]),
    "no metrics": ("alpha: 0.05\n", ["gate.yaml: metrics: required key is missing"]),
    "duplicate key": ("metrics:\n  error_rate: {}\n  error_rate: {margin: 0.1}\n", ["gate.yaml:3: not valid YAML: duplicate key 'error_rate'"]),
    "broken yaml": ("metrics: [\n", ["gate.yaml:2: not valid YAML"]),
    "not a mapping": ("- 1\n- 2\n", ["gate.yaml: expected a mapping with a 'metrics' section, got list"]),
    "no such metric": ("metrics:\n  nonsense.pass_rate: {}\n", ["gate.yaml: metrics.nonsense.pass_rate: no such metric"]),
    "not utf-8": (b"metrics:\n  caf\xe9: {}\n", ["gate.yaml:2: not UTF-8 text"]),
}


@pytest.mark.parametrize("case", sorted(GATE_CASES))
def test_bad_gate_policy(tmp_path, store, case):
    text, needles = GATE_CASES[case]
    policy = _write(tmp_path / "gate.yaml", text)
    assert_bad_input(invoke("gate", "run-good", "--db", str(store), "--policy", str(policy), "--out-dir", str(tmp_path / "o")),
                     *needles)
    assert_bad_input(invoke("report", "run-good", "--db", str(store), "--policy", str(policy), "--out-dir", str(tmp_path / "o"),
                            "--quiet"), *needles)


def test_missing_gate_policy(tmp_path, store):
    assert_bad_input(invoke("gate", "run-good", "--db", str(store), "--policy", str(tmp_path / "none.yaml")),
                     "none.yaml: cannot read policy file: No such file or directory")


EVALUATOR_CASES = {
    "unknown evaluator": ("evaluators:\n  - groundedness\n  - nonsense\n", ["e.yaml: evaluators[1]: unknown evaluator 'nonsense'"]),
    "unknown option": ("evaluators:\n  - name: task_completion\n    options: {matsh: exact}\n",
                       ["e.yaml: evaluators[0]: evaluator 'task_completion': unknown option(s) ['matsh']"]),
    "options not a mapping": ("evaluators:\n  - name: task_completion\n    options: [1]\n", ["e.yaml: evaluators[0].options: expected a mapping"]),
    "name not a string": ("evaluators:\n  - name: {a: 1}\n", ["e.yaml: evaluators[0].name: expected a non-empty string"]),
    "a number": ("evaluators:\n  - 5\n", ["e.yaml: evaluators[0]: expected an evaluator name"]),
    "empty list": ("evaluators: []\n", ["e.yaml: evaluators: expected a non-empty list"]),
    "unknown top-level key": ("evaluator: [groundedness]\n", ["e.yaml: evaluator: unknown key"]),
    "broken yaml": ("evaluators: [\n", ["e.yaml:2: not valid YAML"]),
}


@pytest.mark.parametrize("case", sorted(EVALUATOR_CASES))
def test_bad_evaluators_config(tmp_path, store, case):
    text, needles = EVALUATOR_CASES[case]
    cfg = _write(tmp_path / "e.yaml", text)
    db = _copy_store(store, tmp_path)
    assert_bad_input(invoke("score", "run-good", "--db", str(db), "--config", str(cfg)), *needles)


def test_bad_evaluator_on_the_command_line(tmp_path, store):
    db = _copy_store(store, tmp_path)
    assert_bad_input(invoke("score", "run-good", "--db", str(db), "-e", "nonsense"),
                     "--evaluator 'nonsense': unknown evaluator 'nonsense'")


def _garbled(store: Path, tmp_path: Path) -> Path:
    """The store with its first block after the two headers overwritten: its checksum fails."""
    data = bytearray(store.read_bytes())
    data[4096:4096 + 8192] = os.urandom(8192)
    return _write(tmp_path / "garbled.duckdb", bytes(data))


def _db_case(kind: str, store: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    if kind == "missing":
        return tmp_path / "none.duckdb", ["none.duckdb: no routecheck store here"]
    if kind == "missing folder":
        return tmp_path / "no" / "such" / "x.duckdb", ["x.duckdb: no routecheck store here"]
    if kind == "directory":
        return tmp_path, [f"{tmp_path}: is a directory"]
    if kind == "not duckdb":
        return _write(tmp_path / "text.duckdb", "hello, not a database\n" * 200), ["text.duckdb: not a DuckDB database file"]
    if kind == "empty file":
        return _write(tmp_path / "empty.duckdb", b""), ["empty.duckdb: not a DuckDB database file"]
    if kind == "foreign duckdb":
        path = tmp_path / "foreign.duckdb"
        with duckdb.connect(str(path)) as con:
            con.execute("CREATE TABLE t AS SELECT 1 AS x")
        return path, ["foreign.duckdb: a DuckDB file, but not a routecheck store"]
    if kind == "truncated":
        return _write(tmp_path / "cut.duckdb", store.read_bytes()[:4096]), ["cut.duckdb: the store cannot be read"]
    if kind == "garbled header":
        return _garbled(store, tmp_path), ["the store cannot be read (Corrupt database file"]
    raise AssertionError(kind)


DB_KINDS = ["missing", "missing folder", "directory", "not duckdb", "empty file", "foreign duckdb", "truncated", "garbled header"]


@pytest.mark.parametrize("kind", DB_KINDS)
def test_bad_db_for_read_commands(tmp_path, store, kind):
    db, needles = _db_case(kind, store, tmp_path)
    for args in (["runs"], ["runs", "--detail", "latest"], ["sql", "select 1"], ["report", "latest", "--quiet"],
                 ["gate", "latest", "--policy", str(REPO / "gate.yaml")], ["experts", "latest"]):
        assert_bad_input(invoke(*args, "--db", str(db)), *needles)


@pytest.mark.parametrize("kind", ["directory", "not duckdb", "foreign duckdb", "truncated", "garbled header"])
def test_bad_db_for_writing_commands(tmp_path, store, routes, kind):
    db, needles = _db_case(kind, store, tmp_path)
    assert_bad_input(invoke("score", "latest", "--db", str(db)), *needles)
    corpus = write_corpus(tmp_path / "c.jsonl", good_rows())
    assert_bad_input(mirror(corpus, routes, db), *needles)


def test_db_whose_folder_is_a_file(tmp_path, routes):
    (tmp_path / "afile").write_text("x")
    corpus = write_corpus(tmp_path / "c.jsonl", good_rows())
    assert_bad_input(mirror(corpus, routes, tmp_path / "afile" / "s.duckdb"), "s.duckdb: cannot create the store's folder", "afile is a file, not a folder")


def test_store_from_a_newer_routecheck(tmp_path, store):
    db = _copy_store(store, tmp_path)
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    assert_bad_input(invoke("runs", "--db", str(db)), "copy.duckdb: written by a newer routecheck (store schema 999")


@pytest.mark.parametrize("run_id, needle", [("nope", "no run 'nope' in the store"), ("", "the run id is empty"),
                                            ("run-", "'run-' matches 2 runs")])
def test_bad_run_ids(tmp_path, store, run_id, needle):
    db = _copy_store(store, tmp_path)
    build_store(db, SyntheticSpec(cohorts={"legal": 3}, run_id="run-other"))  # a second run: "run-" is ambiguous
    for args in (["runs", "--detail", run_id], ["report", run_id, "--quiet"], ["gate", run_id, "--policy", str(REPO / "gate.yaml")],
                 ["score", run_id], ["experts", run_id]):
        assert_bad_input(invoke(*args, "--db", str(db)), needle)


def test_resume_of_an_unknown_run(tmp_path, store, routes):
    db = _copy_store(store, tmp_path)
    corpus = write_corpus(tmp_path / "c.jsonl", good_rows())
    assert_bad_input(mirror(corpus, routes, db, "--resume", "nope"), "no run 'nope' in the store")


# -- the real entry point, in a subprocess -----------------------------------------------------

def _routecheck(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=120)


def test_version_and_bad_inputs_in_a_real_process(tmp_path, store):
    from harness import __version__

    done = _routecheck("--version", cwd=tmp_path)
    assert (done.returncode, done.stdout.strip()) == (0, f"routecheck {__version__}")
    bad_db = _garbled(store, tmp_path)
    for args, needle in ((["mirror", "-c", "none.jsonl", "-r", str(REPO / "routes.yaml"), "--no-progress"], "none.jsonl: corpus file not found"),
                         (["runs", "--db", str(bad_db)], "the store cannot be read")):
        done = _routecheck(*args, cwd=tmp_path)
        assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines

