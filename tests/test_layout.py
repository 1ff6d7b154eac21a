"""The layout's promises, checked on the source: no import cycles, vendor names in one folder,
one prompt format."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("harness", "evaluators")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every project module `path` imports, at any depth (function-level imports count too),
    except under `if TYPE_CHECKING:`. `from a.b import c` is an edge to a.b.c when that is a
    module, else to a.b."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(path, name, known) for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _stage(module: str) -> str:
    """The stage package a module belongs to: harness.<stage> or the top-level package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "harness" and len(parts) > 1 else parts[0]


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules():
    assert _cycles(_graph()) == []


def test_no_import_cycle_between_stage_packages():
    graph = _graph()
    stages: dict[str, set[str]] = {}
    for mod, deps in graph.items():
        stages.setdefault(_stage(mod), set()).update(_stage(d) for d in deps if _stage(d) != _stage(mod))
    assert _cycles(stages) == []


def test_an_import_inside_a_function_counts(tmp_path):
    mod = tmp_path / "m.py"
    mod.write_text("def f():\n    from harness.store import views\n")
    assert _imports(mod, "m", {"harness.store", "harness.store.views"}) == {"harness.store.views"}


# Vendor specifics: the span name, attribute prefix, metric prefix and environment variables of
# a serving engine appear only in its module under harness/serving/engines/.
VENDOR = re.compile(r"llm_request|gen_ai\.latency\.|\bvllm:[a-z_]|\bVLLM_[A-Z_]+|vllm\.entrypoints")


def test_vendor_names_only_under_the_engines_folder():
    offenders = []
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            if path.is_relative_to(ROOT / "harness" / "serving" / "engines"):
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if VENDOR.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert offenders == []


def test_testbed_trains_on_the_prompt_format_the_runner_sends():
    from harness.corpus import read_corpus
    from testbed.data import request_messages

    corpus = ROOT / "examples" / "corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text().splitlines()[:200]]
    with_context = [r for r in rows if r.get("context")]
    assert with_context, "the bundled corpus has rows with a context"
    records = {r.id: r for r in read_corpus(corpus)}
    for row in rows:
        assert request_messages(row) == records[row["id"]].request_messages()
    system_row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "context": "C"}
    from harness.corpus import with_context as runner_format

    assert request_messages(system_row) == runner_format(system_row["messages"], "C")
    assert request_messages(system_row)[0]["content"] == "Be brief.\n\nContext:\nC"


@pytest.mark.parametrize("module", ["harness.cli", "harness.serving", "evaluators"])
def test_packages_import_cleanly(module):
    __import__(module)
