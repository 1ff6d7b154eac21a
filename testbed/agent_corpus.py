"""examples/agent_corpus.jsonl: a billing agent that must look up the account by email, then fetch
its latest invoice, then answer from it (an agent trajectory per row; docs/evaluators.md).

    python -m testbed.agent_corpus            # writes examples/agent_corpus.jsonl

Two cohorts ask for different fields of the same invoice: `amount_due` and `due_date`. Results
are scripted per row (tool_results): the right email gives the account, the right account id
gives the invoice, anything else a scripted error the agent can recover from; a tool the row does
not offer (say the testbed's trained `track_order`) has no scripted result and ends the trajectory.
The testbed models were never trained on this loop (testbed/MODEL_CARD.md): the corpus measures
what they do with it, it does not teach them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from testbed.data import HELDOUT_FIRST, HELDOUT_LAST

TOOLS = [
    {"type": "function", "function": {
        "name": "lookup_account", "description": "Find a customer's account by email.",
        "parameters": {"type": "object", "properties": {"email": {"type": "string"}}, "required": ["email"]}}},
    {"type": "function", "function": {
        "name": "get_invoice", "description": "Latest invoice of an account id.",
        "parameters": {"type": "object", "properties": {"account_id": {"type": "string"}}, "required": ["account_id"]}}},
]

QUESTIONS = {
    "amount_due": ["How much do I owe on my latest invoice? My email is {email}.",
                   "What is the amount due on my last bill? I signed up as {email}.",
                   "Can you tell me my outstanding balance? Account email: {email}."],
    "due_date": ["When is my latest invoice due? My email is {email}.",
                 "What is the due date of my last bill? I signed up as {email}.",
                 "By when do I have to pay my invoice? Account email: {email}."],
}
ANSWER_FIELD = {"amount_due": "amount_due", "due_date": "due_date"}


def _row(rng: random.Random, cohort: str, n: int) -> dict[str, Any]:
    first, last = rng.choice(HELDOUT_FIRST), rng.choice(HELDOUT_LAST)
    email = f"{first}.{last}@example.com".lower()
    account = f"ACC-{rng.randint(1000, 9999)}"
    invoice = {"invoice": f"INV-{rng.randint(10000, 99999)}", "amount_due": f"${rng.randint(20, 900)}.{rng.randint(0, 99):02d}",
               "due_date": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"}
    return {
        "id": f"{cohort}-{n:03d}", "cohort": cohort,
        "messages": [{"role": "user", "content": rng.choice(QUESTIONS[cohort]).format(email=email)}],
        "tools": TOOLS,
        "tool_results": {
            "lookup_account": [{"match": {"email": f"(?i)\\s*{email.replace('.', '[.]')}\\s*"},
                                "result": {"account_id": account, "name": f"{first} {last}"}},
                               {"result": {"error": "no account with that email"}}],
            "get_invoice": [{"match": {"account_id": f"(?i)\\s*{account}\\s*"}, "result": invoice},
                            {"result": {"error": "no such account id"}}],
        },
        "max_steps": 4,
        "expected": {
            "steps": [[{"lookup_account": {"email": [email]}}], [{"get_invoice": {"account_id": [account]}}]],
            "answer": invoice[ANSWER_FIELD[cohort]], "match": "contains",
        },
        "metadata": {"email": email, "account_id": account},
    }


def write_agent_corpus(path: str | Path = "examples/agent_corpus.jsonl", per_cohort: int = 20, seed: int = 20250321) -> int:
    rng = random.Random(seed)
    rows = [_row(rng, cohort, n) for cohort in QUESTIONS for n in range(1, per_cohort + 1)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


if __name__ == "__main__":
    print(f"wrote {write_agent_corpus()} rows to examples/agent_corpus.jsonl")
