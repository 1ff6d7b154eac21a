"""Agent trajectories for tests: a billing agent that must look up an account, then its invoice,
then answer; stub scripts that play it right, loop, call an unscripted tool, or recover."""

from __future__ import annotations

from typing import Any

TOOLS = [
    {"type": "function", "function": {"name": "lookup_account", "description": "Find a customer's account by email.",
                                      "parameters": {"type": "object", "properties": {"email": {"type": "string"}},
                                                     "required": ["email"]}}},
    {"type": "function", "function": {"name": "get_invoice", "description": "The latest invoice of an account.",
                                      "parameters": {"type": "object",
                                                     "properties": {"account_id": {"type": "string"}, "month": {"type": "string"}},
                                                     "required": ["account_id"]}}},
    {"type": "function", "function": {"name": "refund_invoice", "description": "Refund an invoice.",
                                      "parameters": {"type": "object", "properties": {"invoice": {"type": "string"}},
                                                     "required": ["invoice"]}}},
]

ACCOUNT = {"account_id": "A-1", "name": "Ann Lee"}
INVOICE = {"invoice": "INV-7", "amount_due": "$42.50", "due_date": "2024-06-01"}

TOOL_RESULTS = {
    "lookup_account": [{"match": {"email": "(?i)ann@example\\.com"}, "result": ACCOUNT},
                       {"result": {"error": "no account with that email"}}],
    "get_invoice": [{"match": {"account_id": "A-1"}, "result": INVOICE}, {"result": {"error": "no such account"}}],
}

EXPECTED = {
    "steps": [[{"lookup_account": {"email": ["ann@example.com"]}}],
              [{"get_invoice": {"account_id": ["A-1"], "month": ["", "2024-05"]}}]],
    "answer": "$42.50", "match": "contains",
}

LOOKUP = {"name": "lookup_account", "arguments": {"email": "ann@example.com"}}
INVOICE_CALL = {"name": "get_invoice", "arguments": {"account_id": "A-1"}}
GOOD_ANSWER = "Your invoice INV-7 is $42.50, due 2024-06-01."

# Stub step scripts: step k's answer (calls, or text) after k - 1 tool turns.
SCRIPTS: dict[str, dict[str, Any]] = {
    "three": {"steps": [[LOOKUP], [INVOICE_CALL], GOOD_ANSWER]},
    "loop": {"steps": [[LOOKUP]]},
    "unscripted": {"steps": [[LOOKUP], [{"name": "refund_invoice", "arguments": {"invoice": "INV-7"}}]]},
    "recover": {"steps": [[{"name": "get_invoice", "arguments": {"account_id": "ann@example.com"}}], [LOOKUP], [INVOICE_CALL],
                          GOOD_ANSWER]},
    # early stop: answers after the first look-up, with an amount it never received
    "early": {"steps": [[LOOKUP], "You owe $99.00."]},
}


def row(prompt_id: str, key: str, cohort: str = "billing", max_steps: int = 4) -> dict[str, Any]:
    return {"id": prompt_id, "cohort": cohort, "prompt": f"How much do I owe? My email is ann@example.com [[stub:{key}]]",
            "tools": TOOLS, "tool_results": TOOL_RESULTS, "max_steps": max_steps, "expected": EXPECTED}
