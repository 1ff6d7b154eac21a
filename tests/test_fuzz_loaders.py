"""Hypothesis over the input loaders: the corpus (JSONL, CSV, Parquet), routes.yaml, gate.yaml and
evaluators.yaml, fed random bytes, random JSON and random YAML (and near-valid documents built
from the real field names, which reach the deeper validation).

The properties (issue 18, "Fuzzing"): a loader either accepts the input or raises its own error
type (CorpusError, ConfigError, EvaluatorError), never anything else (which would be a traceback
in the CLI); and every line of a rejection starts with the file's path, with a line number that
exists in the file or a key. Each test runs a fixed number of examples, derandomized, with no
example database: a few seconds each, the same examples every run.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from evaluators.config import load_evaluator_config
from evaluators.registry import EvaluatorError
from harness.config import ConfigError, RouteConfig, load_routes
from harness.corpus import CorpusError, PromptRecord, check_corpus, read_corpus
from harness.report.policy import MetricRule, Policy, load_policy

FUZZ = settings(max_examples=100, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Text with the characters that break naive loaders: controls, NUL, BOM, NEL, lone surrogates.
chars = st.characters(exclude_categories=()) | st.sampled_from("\x00\x01\x1b\r\n\t\ufeff\x85\u2028\ud800\udfff\"'\\,:-[]{}#&*!|>%@`")
texts = st.text(chars, max_size=24)
scalars = st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63 - 2, max_value=2**70) | st.floats() | texts
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
                           max_leaves=16)
junk_yaml = st.lists(st.sampled_from(list(":-[]{}#&*!|>'\"%@`?,= \n\t  abc012") + ["\x00", "\x85", "\ufeff", "!!python/object ",
                                     "!!binary ", "&a ", "*a", "<<: ", "metrics:", "routes:", "evaluators:", "- name: "]),
                     max_size=60).map("".join)


def _near(fields: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """A mapping with some of the real keys (plausible or random values) and now and then a stray key."""
    plausible = {k: v | json_values for k, v in fields.items()}
    return st.fixed_dictionaries({}, optional={**plausible, "stray": json_values})


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory(prefix="routecheck-fuzz-") as d:
        yield Path(d)


def _names_location(message: str, path: Path, data: bytes, lines: int | None = None) -> None:
    """Every line of the error starts with the file, and a line number it gives exists in the file
    (`lines`: how many there are, when they are not text lines: Parquet rows)."""
    lines = lines if lines is not None else data.count(b"\n") + 1
    for line in message.split("\n"):  # not splitlines(): a \x0b or \x1c in quoted data is not a line break
        assert line.startswith(str(path)), message
        m = re.match(re.escape(str(path)) + r":(\d+):", line)
        if m:
            assert 1 <= int(m.group(1)) <= lines, (message, lines)
        else:
            assert line.startswith(f"{path}: "), message


# -- the corpus --------------------------------------------------------------------------------

ROLES = st.sampled_from(["system", "user", "assistant", "tool"])
corpus_rows = _near({
    "id": texts | st.integers(), "cohort": texts, "prompt": texts, "context": texts,
    "messages": st.lists(_near({"role": ROLES, "content": texts}), max_size=3),
    "tools": st.lists(_near({"type": st.just("function"), "function": _near({"name": texts, "parameters": st.just({})})}), max_size=2),
    "expected": _near({"answer": texts, "tool": texts, "arguments": st.dictionaries(texts, json_values, max_size=2),
                       "steps": st.lists(st.lists(st.dictionaries(texts, st.dictionaries(texts, st.lists(json_values, max_size=2),
                                                                                            max_size=2), max_size=2), max_size=2), max_size=2)}),
    "metadata": st.dictionaries(texts, json_values, max_size=3),
    "tool_results": st.dictionaries(texts, json_values, max_size=2),
    "max_steps": st.integers(),
})


ids = st.text(st.characters(categories=["L", "N"]) | st.sampled_from("-_.:/ "), min_size=1, max_size=8)
# Mostly valid rows (so acceptance, skipping and duplicate ids are exercised too), now and then with random extras.
valid_rows = st.fixed_dictionaries(
    {"id": ids, "prompt": texts.filter(bool)},
    optional={"cohort": texts, "context": texts, "metadata": st.dictionaries(texts, json_values, max_size=3),
              "expected": st.fixed_dictionaries({}, optional={"answer": texts, "tool": texts})})
corpus_rows = valid_rows | valid_rows | corpus_rows


def _check_corpus(path: Path, data: bytes, skip_invalid: bool, lines: int | None = None) -> None:
    path.write_bytes(data)
    lines = lines if lines is not None else data.count(b"\n") + 1
    try:
        stats = check_corpus(path, skip_invalid=skip_invalid)
    except CorpusError as e:
        event("rejected")
        _names_location(str(e), path, data, lines)
        return
    event("accepted")
    records = list(read_corpus(path, skip_invalid=skip_invalid))
    assert len(records) == stats.read > 0
    assert len({r.id for r in records}) == len(records)
    assert all(isinstance(r, PromptRecord) and 1 <= r.source_line <= lines for r in records)
    for reason in stats.skipped_reasons:
        _names_location(reason, path, data, lines)
    for r in records:  # what the store will write: encodable text, JSON without NaN
        json.dumps(r.store_row("run"), allow_nan=False, default=str).encode("utf-8")


@FUZZ
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".jsonl", ".csv", ".parquet"]), skip=st.booleans())
def test_corpus_random_bytes(folder, data, suffix, skip):
    _check_corpus(folder / f"random{suffix}", data, skip)


@FUZZ
@given(rows=st.lists(corpus_rows | json_values, max_size=6), skip=st.booleans(), ascii_only=st.booleans())
def test_corpus_random_jsonl(folder, rows, skip, ascii_only):
    text = "".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in rows)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate written raw: the file holds invalid UTF-8
        data = text.encode("utf-8", "surrogatepass")
    _check_corpus(folder / "rows.jsonl", data, skip)


@FUZZ
@given(rows=st.lists(corpus_rows, max_size=5), skip=st.booleans())
def test_corpus_random_csv(folder, rows, skip):
    buf = io.StringIO()
    header = sorted({k for r in rows for k in r}) or ["id"]
    w = csv.DictWriter(buf, fieldnames=header)
    w.writeheader()
    for r in rows:
        w.writerow({k: v if isinstance(v, str) else json.dumps(v) for k, v in r.items()})
    _check_corpus(folder / "rows.csv", buf.getvalue().encode("utf-8", "surrogatepass"), skip)


@settings(FUZZ, max_examples=60)
@given(rows=st.lists(corpus_rows, min_size=1, max_size=4), skip=st.booleans())
def test_corpus_random_parquet(folder, rows, skip):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = folder / "rows.parquet"
    cols = sorted({k for r in rows for k in r})
    try:  # columns of text: JSON for the nested ones, as the corpus format says
        table = pa.table({c: [None if c not in r else r[c] if isinstance(r[c], str) else json.dumps(r[c]) for r in rows]
                          for c in cols} or {"id": [None] * len(rows)})
        pq.write_table(table, path)
    except (pa.ArrowException, UnicodeEncodeError):  # a surrogate Arrow cannot hold: not a file anyone can write
        return
    _check_corpus(path, path.read_bytes(), skip, lines=len(rows))


# -- routes.yaml, gate.yaml, evaluators.yaml ---------------------------------------------------

def _yaml_bytes(doc) -> bytes | None:
    try:
        return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8")
    except (yaml.YAMLError, UnicodeEncodeError):
        return None


def _check_config(path: Path, data: bytes, load, error) -> None:
    path.write_bytes(data)
    try:
        load(path)
        event("accepted")
    except error as e:
        event("rejected")
        _names_location(str(e), path, data)


URLS = st.sampled_from(["http://127.0.0.1:8000/v1", "https://api.example.com/v1", "not a url", "http://", "ftp://x/v1",
                        "http://h:99999/v1", "http://h:port/v1", " http://h/v1 ", "http://[::1/v1"])
route = _near({
    "name": st.sampled_from(["base", "cand", "a b", ""]) | texts, "role": st.sampled_from(["baseline", "candidate"]),
    "model": texts, "base_url": URLS, "api_key_env": texts,
    "serve": _near({"engine": st.sampled_from(["vllm", "Bad!"]), "model": texts | st.just("x" * 5000), "port": st.integers()}),
    "request": _near({k: st.floats() | st.integers() for k in ("temperature", "max_tokens", "seed", "top_p")}),
    "max_concurrency": st.integers(), "timeout_s": st.floats(), "architecture": st.sampled_from(["dense", "moe"]),
    "num_experts": st.integers(), "active_experts": st.integers(),
    **{k: json_values for k in RouteConfig.model_fields if k not in ("name", "role", "model", "base_url", "api_key_env", "serve",
                                                                     "request", "max_concurrency", "timeout_s", "architecture",
                                                                     "num_experts", "active_experts")},
})
METRICS = st.sampled_from(["latency_p99_s", "error_rate", "task_completion.pass_rate", "dropped_token_rate@1.25",
                           "utilization_entropy", "nonsense"]) | texts
rule = _near({k: st.floats() | st.integers() | st.booleans() for k in MetricRule.model_fields})
policy = _near({
    "metrics": st.dictionaries(METRICS, rule, max_size=3), "cohorts": st.dictionaries(texts, st.dictionaries(METRICS | st.just("*"), rule, max_size=2), max_size=2),
    **{k: json_values for k in Policy.model_fields if k not in ("metrics", "cohorts")},
})
NAMES = st.sampled_from(["groundedness", "task_completion", "tool_selection", "nonsense"]) | texts
evaluator_item = NAMES | _near({"name": NAMES, "options": st.dictionaries(texts, json_values, max_size=3), "as": texts})
evaluators_doc = _near({"evaluators": st.lists(evaluator_item, max_size=4)}) | st.lists(evaluator_item, max_size=3)

good_route = st.fixed_dictionaries({"name": st.sampled_from(["base", "cand", "c2"]), "role": st.sampled_from(["baseline", "candidate"]),
                                    "model": texts, "base_url": URLS},
                                   optional={"max_concurrency": st.integers(-1, 64), "timeout_s": st.floats(-1, 100),
                                             "request": _near({"temperature": st.floats(-1, 3), "max_tokens": st.integers(-1, 999)})})
good_policy = st.fixed_dictionaries({"metrics": st.dictionaries(METRICS, _near({"margin": st.floats(0, 1), "margin_rel": st.floats(0, 1),
                                                                                 "max": st.floats(0, 1), "enabled": st.booleans()}),
                                                                 min_size=1, max_size=3)},
                                    optional={"alpha": st.floats(0, 0.6), "min_samples": st.integers(0, 50)})
good_evaluators = st.fixed_dictionaries({"evaluators": st.lists(st.sampled_from(["groundedness", "task_completion", "tool_selection"])
                                                                | st.fixed_dictionaries({"name": NAMES}, optional={"as": texts}),
                                                                min_size=1, max_size=3)})
LOADERS = {
    "routes": (load_routes, ConfigError, st.fixed_dictionaries({"routes": st.lists(good_route, min_size=1, max_size=3)})
               | _near({"routes": st.lists(route, max_size=3)}) | st.lists(route, max_size=2)),
    "gate": (load_policy, ConfigError, good_policy | policy),
    "evaluators": (load_evaluator_config, EvaluatorError, good_evaluators | evaluators_doc),
}


kinds = st.sampled_from(sorted(LOADERS))


@settings(FUZZ, max_examples=150)
@given(kind=kinds, data=st.binary(max_size=400))
def test_config_random_bytes(folder, kind, data):
    load, error, _ = LOADERS[kind]
    _check_config(folder / f"{kind}.yaml", data, load, error)


@settings(FUZZ, max_examples=150)
@given(kind=kinds, text=junk_yaml)
def test_config_random_yaml_text(folder, kind, text):
    load, error, _ = LOADERS[kind]
    _check_config(folder / f"{kind}.yaml", text.encode("utf-8"), load, error)


@settings(FUZZ, max_examples=200)
@given(data=st.data(), kind=kinds, as_json=st.booleans())
def test_config_random_documents(folder, data, kind, as_json):
    """Near-valid documents as YAML and, since JSON is YAML, as JSON (with the odd floats)."""
    load, error, docs = LOADERS[kind]
    doc = data.draw(docs | json_values, label="doc")
    raw = json.dumps(doc).encode() if as_json else _yaml_bytes(doc)
    if raw is not None:
        _check_config(folder / f"{kind}.yaml", raw, load, error)


def test_the_generators_reach_acceptance(folder):
    """The near-valid strategies are not all rejections: valid documents of each kind load."""
    ok = {"routes": {"routes": [{"name": "b", "role": "baseline", "model": "m", "base_url": "http://h/v1"},
                                {"name": "c", "role": "candidate", "model": "m", "base_url": "http://h/v1"}]},
          "gate": {"metrics": {"latency_p99_s": {"margin_rel": 0.1}}},
          "evaluators": {"evaluators": ["groundedness", {"name": "task_completion", "options": {"match": "exact"}}]}}
    for kind, (load, _error, _docs) in LOADERS.items():
        path = folder / f"ok-{kind}.yaml"
        path.write_bytes(_yaml_bytes(ok[kind]))
        assert load(path)
