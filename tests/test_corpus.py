import json

import pandas as pd
import pytest

from harness.corpus import CONTEXT_PREAMBLE, CorpusError, CorpusStats, read_corpus

ROWS = [
    {"id": "a1", "cohort": "billing", "prompt": "How much?", "context": "Amount due: $5.", "expected": {"answer": "$5"}},
    {"id": "a2", "cohort": "sql", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Count orders"}],
     "context": "orders table", "tools": [{"type": "function", "function": {"name": "run_sql", "parameters": {"type": "object"}}}],
     "expected": {"tool": "run_sql", "arguments": {"query": "SELECT 1"}}, "metadata": {"lang": "en"}},
]


def test_jsonl_rows_and_request_messages(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    recs = list(read_corpus(p))
    assert [r.id for r in recs] == ["a1", "a2"]
    assert [r.source_line for r in recs] == [1, 2]
    assert recs[0].request_messages() == [{"role": "system", "content": CONTEXT_PREAMBLE + "Amount due: $5."},
                                          {"role": "user", "content": "How much?"}]
    assert recs[1].request_messages()[0] == {"role": "system", "content": "Be brief.\n\nContext:\norders table"}
    assert recs[1].expected.tool == "run_sql"


def test_csv_and_parquet_give_the_same_rows(tmp_path):
    df = pd.DataFrame([{k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()} for r in ROWS])
    df.to_csv(tmp_path / "c.csv", index=False)
    df.to_parquet(tmp_path / "c.parquet")
    for name in ("c.csv", "c.parquet"):
        recs = list(read_corpus(tmp_path / name))
        assert [r.id for r in recs] == ["a1", "a2"], name
        assert recs[1].tools[0]["function"]["name"] == "run_sql"
        assert recs[1].metadata == {"lang": "en"}


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"id": "x", "messages": "hi"}', "messages: Input should be a valid list, got str"),
        ('{"id": "x"}', "needs 'messages' (a list of {role, content}) or 'prompt'"),
        ('{"id": "x", "prompt": "hi", "cohrt": "a"}', "cohrt: unknown field"),
        ('{"id": "x", "prompt": "hi"', "not valid JSON"),
        ('["x"]', "expected a JSON object per line, got list"),
        ('{"id": "x", "prompt": "hi", "tools": [{"name": "f"}]}', "tools[0] must be {'type': 'function'"),
        ('{"id": "a1", "prompt": "again"}', "duplicate id 'a1'"),
    ],
)
def test_bad_row_names_file_line_and_reason(tmp_path, line, expected):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\n" + line + "\n")
    with pytest.raises(CorpusError) as e:
        list(read_corpus(p))
    assert str(e.value).startswith(f"{p}:2: ") and expected in str(e.value), str(e.value)


def test_skip_invalid_counts(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(json.dumps(ROWS[0]) + "\nnot json\n" + json.dumps(ROWS[1]) + "\n{}\n")
    stats = CorpusStats()
    recs = list(read_corpus(p, skip_invalid=True, stats=stats))
    assert [r.id for r in recs] == ["a1", "a2"]
    assert (stats.read, stats.skipped) == (2, 2)
    assert stats.skipped_reasons[0].startswith(f"{p}:2:")


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "c.txt").write_text("x")
    with pytest.raises(CorpusError, match="unknown corpus format"):
        list(read_corpus(tmp_path / "c.txt"))
    with pytest.raises(CorpusError, match="not found"):
        list(read_corpus(tmp_path / "none.jsonl"))


def test_content_as_a_list_of_parts(tmp_path):
    """OpenAI's content parts (what the openai client and `vllm bench serve` send): kept and sent as
    given; the context goes in as one more text part; bad parts are a line-numbered error."""
    from harness.corpus import content_text

    parts = [{"type": "text", "text": "What is in"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
             {"type": "text", "text": "this picture?"}]
    rows = [{"id": "v1", "messages": [{"role": "user", "content": parts}]},
            {"id": "v2", "messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                                      {"role": "user", "content": parts}], "context": "a cat"}]
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    recs = list(read_corpus(p))
    assert recs[0].request_messages() == [{"role": "user", "content": parts}]
    assert recs[0].store_row("r")["messages"] == [{"role": "user", "content": parts}]
    assert recs[1].request_messages()[0] == {"role": "system", "content": [{"type": "text", "text": "Be brief."},
                                                                           {"type": "text", "text": "\n\nContext:\na cat"}]}
    assert content_text(parts) == "What is in this picture?" and content_text("plain") == "plain" and content_text(None) == ""
    for bad, why in [([{"type": "video", "url": "x"}], "'type' must be one of text, image_url"),
                     ([{"type": "text"}], "a text part needs 'text'"),
                     ([{"type": "image_url", "image_url": "x"}], "an image_url part needs 'image_url': {'url': ...}"),
                     (["just a string"], "content")]:
        q = tmp_path / "bad.jsonl"
        q.write_text(json.dumps({"id": "b", "messages": [{"role": "user", "content": bad}]}) + "\n")
        with pytest.raises(CorpusError) as e:
            list(read_corpus(q))
        assert str(e.value).startswith(f"{q}:1:") and why in str(e.value), str(e.value)


def test_a_mirror_run_of_content_part_rows(tmp_path, stub_server):
    """Rows with content parts go through the mirror to a stub as given, are stored as given, and the
    report reads their text parts."""
    import duckdb

    from conftest import write_corpus, write_routes
    from harness.config import load_routes
    from harness.mirror.runner import MirrorOptions, run_mirror
    from harness.report.load import prompt_texts

    a, b = stub_server(), stub_server()
    routes = write_routes(tmp_path / "routes.yaml", [{"name": "a", "role": "baseline", "model": "a", "base_url": a.base_url},
                                                     {"name": "b", "role": "candidate", "model": "b", "base_url": b.base_url}])
    parts = [{"type": "text", "text": "hello"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
             {"type": "text", "text": "world"}]
    corpus = write_corpus(tmp_path / "c.jsonl", [{"id": f"q{i}", "messages": [{"role": "user", "content": parts}]} for i in range(3)])
    db = tmp_path / "s.duckdb"
    summary = run_mirror(load_routes(routes), MirrorOptions(corpus=corpus, db=db))
    assert summary.status == "completed"
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT text), any_value(text), count(error_type) FROM responses WHERE NOT warmup").fetchone() == (
        6, 1, "Echo: hello world", 0)
    assert json.loads(con.execute("SELECT messages FROM prompts LIMIT 1").fetchone()[0]) == [{"role": "user", "content": parts}]
    assert set(prompt_texts(con, summary.run_id)["text"]) == {"hello world"}
    con.close()
