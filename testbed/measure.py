"""Per-cohort exact-match accuracy of a running vLLM server on the bundled corpus.

    python -m testbed.measure --base-url http://127.0.0.1:8100/v1 --model dense [--corpus examples/corpus.jsonl]

Requests are built the way the runner builds them (harness.corpus.PromptRecord.request_messages,
tools in the OpenAI `tools` field, temperature 0, max_tokens 64, non-streaming). A row passes when
the stripped answer equals `expected.answer`, or when vLLM's parsed `tool_calls` hold exactly one
call with the expected name and arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from harness.corpus import PromptRecord, read_corpus


def is_correct(expected: dict[str, Any], message: dict[str, Any]) -> bool:
    calls = message.get("tool_calls") or []
    if expected.get("tool"):
        if len(calls) != 1:
            return False
        fn = calls[0].get("function") or {}
        try:
            args = json.loads(fn.get("arguments") or "null")
        except json.JSONDecodeError:
            return False
        return fn.get("name") == expected["tool"] and args == expected.get("arguments")
    return not calls and (message.get("content") or "").strip() == expected.get("answer")


async def _ask(client: httpx.AsyncClient, sem: asyncio.Semaphore, url: str, model: str, rec: PromptRecord,
               max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": rec.request_messages(), "temperature": 0.0,
                            "max_tokens": max_tokens, "seed": 0}
    if rec.tools:
        body["tools"] = rec.tools
    async with sem:
        resp = await client.post(url, json=body)
    resp.raise_for_status()
    message = resp.json()["choices"][0]["message"]
    expected = rec.expected.model_dump(exclude_none=True) if rec.expected else {}
    return {"id": rec.id, "cohort": rec.cohort, "lang": rec.metadata.get("lang"), "correct": is_correct(expected, message),
            "content": message.get("content"), "tool_calls": json.dumps(message.get("tool_calls") or []),
            "expected": json.dumps(expected, ensure_ascii=False)}


async def measure(base_url: str, model: str, corpus: Path, concurrency: int, max_tokens: int, limit: int | None) -> pd.DataFrame:
    records = list(read_corpus(corpus))
    if limit:
        records = [r for r in records if int(r.id.rsplit("-", 1)[-1]) <= limit]
    sem = asyncio.Semaphore(concurrency)
    url = base_url.rstrip("/") + "/chat/completions"
    async with httpx.AsyncClient(timeout=120) as client:
        rows = await asyncio.gather(*(_ask(client, sem, url, model, r, max_tokens) for r in records))
    return pd.DataFrame(rows)


def accuracy_table(df: pd.DataFrame) -> pd.DataFrame:
    table = df.groupby("cohort").agg(n=("correct", "size"), accuracy=("correct", "mean"))
    table.loc["ALL"] = [len(df), df["correct"].mean()]
    table["accuracy"] = (100 * table["accuracy"]).round(1)
    table["n"] = table["n"].astype(int)
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True, help="e.g. http://127.0.0.1:8100/v1")
    ap.add_argument("--model", required=True, help="served model name")
    ap.add_argument("--corpus", type=Path, default=Path(__file__).resolve().parent.parent / "examples" / "corpus.jsonl")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--limit", type=int, help="only rows numbered <= LIMIT in each cohort")
    ap.add_argument("--out", type=Path, help="write per-row results (JSONL) here")
    ap.add_argument("--show-errors", type=int, default=0, help="print this many wrong rows per cohort")
    args = ap.parse_args(argv)
    df = asyncio.run(measure(args.base_url, args.model, args.corpus, args.concurrency, args.max_tokens, args.limit))
    if args.out:
        df.to_json(args.out, orient="records", lines=True, force_ascii=False)
    if args.show_errors:
        for cohort, group in df[~df["correct"]].groupby("cohort"):
            for _, r in group.head(args.show_errors).iterrows():
                print(f"  [{cohort}] {r['id']}: got {r['content']!r} {r['tool_calls']} expected {r['expected']}", file=sys.stderr)
    print(f"model {args.model} at {args.base_url}")
    print(accuracy_table(df).to_string())


if __name__ == "__main__":
    main()
