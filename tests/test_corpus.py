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
