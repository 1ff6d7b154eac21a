"""A corpus row's explicit `expected: {"tool": null}` (no call is right) survives into the store."""

from harness.corpus import PromptRecord


def test_explicit_null_tool_is_stored():
    rec = PromptRecord(id="i1", prompt="What is love?", tools=[{"type": "function", "function": {"name": "f"}}], expected={"tool": None})
    assert rec.store_row("run")["expected"] == {"tool": None}


def test_unset_fields_are_not_stored_and_extras_kept():
    rec = PromptRecord(id="b1", prompt="x", expected={"answer": "4"})
    assert rec.store_row("run")["expected"] == {"answer": "4"}
    rec2 = PromptRecord(id="b2", prompt="x", expected={"possible_answer": [{"f": {"a": ["", None]}}]})
    assert rec2.store_row("run")["expected"] == {"possible_answer": [{"f": {"a": ["", None]}}]}
