"""Synthetic support-desk conversations for the testbed models, generated from templates.

Two disjoint template sets: `train` (what the models learn from) and `heldout` (the bundled
evaluation corpus). Held-out rows use other question phrasings, real-looking names, plans and
cities that no training row contains (training rows use random letter strings there), and fresh
random values, so a model can only score by copying from the context or the question, not by recall.
Every row carries one exact expected outcome: an answer string or a tool call.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from harness.corpus import with_context  # the prompt format the runner sends, defined once

Split = Literal["train", "heldout"]
COHORTS = ("billing", "order_tracking", "analytics", "legal", "multilingual")


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "track_order",
            "description": "Look up where a customer's order is.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "description": "The order id."}},
                "required": ["order_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_sql",
            "description": "Run a read-only SQL query on the analytics database.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string", "description": "One SQL SELECT statement."}},
                "required": ["query"],
            },
        },
    },
]

# ---------------------------------------------------------------- values (held-out pools; random strings in training)

# Held-out value pools: real-looking names, plan tiers and cities that the models never see in training.
HELDOUT_FIRST = ["Amara", "Bruno", "Celine", "Dmitri", "Esther", "Felix", "Gloria", "Hugo", "Ingrid", "Jonas",
                 "Keiko", "Lucas", "Mirela", "Nikolai", "Oscar", "Paloma", "Rafael", "Sofia", "Tomas", "Ursula"]
HELDOUT_LAST = ["Abara", "Bianchi", "Castillo", "Dubois", "Eriksen", "Fontaine", "Gruber", "Horvat", "Ivanova",
                "Jovanovic", "Kaplan", "Lindqvist", "Marsh", "Nakamura", "Oyelaran", "Petrov"]
HELDOUT_PLAN_TIER = ["Growth", "Premium", "Business"]
HELDOUT_PLAN_PERIOD = ["Yearly", "Monthly", "Annual"]
HELDOUT_CITIES = ["Zaragoza", "Murcia", "Burdeos", "Marsella", "Niza", "Malaga", "Dijon"]
PLACES = {"train": ["England", "Ireland", "New York", "Ontario", "Delaware", "Scotland"],
          "heldout": ["California", "Texas", "Quebec", "Victoria"]}

# `_invented` words (syllables) appear only in the echo drills.
ONSETS = ["b", "br", "c", "ch", "d", "dr", "f", "g", "gr", "h", "j", "k", "kr", "l", "m", "n", "p", "pr", "qu", "r",
          "s", "sh", "st", "t", "th", "tr", "v", "w", "z"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ie", "ou", "y"]
CODAS = ["", "", "", "n", "r", "l", "s", "t", "m", "x", "nd", "rk", "st"]


def _invented(rng: random.Random) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(rng.randint(1, 3))).capitalize()


VOWEL_LETTERS = "aeiouy"
CONSONANT_LETTERS = "bcdfghjklmnpqrstvwxz"


def _random_word(rng: random.Random) -> str:
    """A capitalised random letter string, for every name, city and plan in training rows.

    With real names from a fixed pool the models memorised the pool and answered held-out rows
    with training names (`Lucia Varga` for `Lucas Lindqvist`): 0 % on name, city and plan values.
    Random strings leave nothing to memorise, so only copying the letters from the context scores.
    """
    out = []
    vowel = rng.random() < 0.5
    for _ in range(rng.randint(3, 9)):
        out.append(rng.choice(VOWEL_LETTERS if vowel else CONSONANT_LETTERS))
        vowel = (not vowel) if rng.random() < 0.75 else vowel
    return "".join(out).capitalize()


def _name(rng: random.Random, split: Split) -> str:
    if split == "train":
        return f"{_random_word(rng)} {_random_word(rng)}"
    return f"{rng.choice(HELDOUT_FIRST)} {rng.choice(HELDOUT_LAST)}"


def _city(rng: random.Random, split: Split) -> str:
    return _random_word(rng) if split == "train" else rng.choice(HELDOUT_CITIES)


def _plan(rng: random.Random, split: Split) -> str:
    if split == "train":
        return f"{_random_word(rng)} {_random_word(rng)}"
    return f"{rng.choice(HELDOUT_PLAN_TIER)} {rng.choice(HELDOUT_PLAN_PERIOD)}"


# Training questions get openers, closers and stray words around the template, so the models learn
# to pick out the handle ("amount due", an order id) from phrasings they never saw.
OPENERS = {
    "en": ["Hi,", "Hello.", "Hey there!", "Good morning.", "Quick one:", "Sorry to bother you,", "One more thing:",
           "I have a question.", "Urgent:", "Hi team,", "Thanks for the help so far.", "Hello again,"],
    "es": ["Hola,", "Buenos días.", "Una pregunta:", "Perdone,", "Gracias de antemano.", "Oiga,"],
    "fr": ["Bonjour,", "Salut.", "Une question :", "Excusez-moi,", "Merci d'avance.", "Rebonjour,"],
}
CLOSERS = {
    "en": ["Thanks!", "Thank you.", "Cheers.", "Much appreciated.", "ASAP please.", "It is urgent.", "Thanks a lot."],
    "es": ["Gracias.", "Muchas gracias.", "Es urgente.", "Un saludo."],
    "fr": ["Merci.", "Merci beaucoup.", "C'est urgent.", "Cordialement."],
}
STRAY_WORDS = {
    "en": ("about again also any anything asap before check could customer delivery did do does find for get give "
           "help here how I if into is it just know last let like look me my need now number of on package please "
           "quick really right see show status still tell thanks that the this today update want week what when "
           "where which will with would yesterday you your").split(),
    "es": "ahora ayuda cliente cuenta dato favor gracias hoy necesito por pregunta pronto rápido saber sobre urgente ya".split(),
    "fr": "aide aujourd'hui besoin client compte donnée merci rapide savoir sur urgent vite vraiment votre".split(),
}


def _dress(rng: random.Random, question: str, split: Split, lang: str = "en") -> str:
    if split != "train":
        return question
    if rng.random() < 0.4:
        question = f"{rng.choice(OPENERS[lang])} {question}"
    if rng.random() < 0.3:
        question = f"{question} {rng.choice(CLOSERS[lang])}"
    if rng.random() < 0.25:
        stray = " ".join(rng.choice(STRAY_WORDS[lang]) for _ in range(rng.randint(1, 4)))
        question = f"{stray.capitalize()}. {question}" if rng.random() < 0.5 else f"{question} {stray.capitalize()}."
    return question


def _frames(cores: list[str], tails: list[str], heldout: list[str], question_starts: tuple[str, ...], space_before_mark: bool = False) -> list[str]:
    """Training question templates: every core x tail, ended by '?' or '.', minus any held-out template.

    Hundreds of frames put the asked handle at many positions among many words, so that a model
    cannot score by memorising where a few templates put it. Held-out templates keep their own
    verbs and openers ("Could you", "governs", "Necesito"), which the cores avoid.
    """
    out = []
    for core in cores:
        for tail in tails:
            mark = "?" if core.startswith(question_starts) else "."
            out.append(f"{core}{tail}{' ' if space_before_mark and mark == '?' else ''}{mark}")
    held = {h.lower() for h in heldout}
    return [f for f in out if f.lower() not in held]


def _usd(rng: random.Random) -> str:
    return f"${rng.randint(5, 990)}.{rng.randint(0, 99):02d}"


def _eur(rng: random.Random) -> str:
    return f"{rng.randint(5, 990)},{rng.randint(0, 99):02d} €"


def _iso_date(rng: random.Random) -> str:
    return f"{rng.randint(2022, 2026)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def _eu_date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(2022, 2026)}"


def _code(rng: random.Random, prefix: str, digits: int) -> str:
    return f"{prefix}-{rng.randint(10 ** (digits - 1), 10**digits - 1)}"


ID_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # order-id prefixes (no I, O, Q: easily misread)


def _order_id(rng: random.Random) -> str:
    return _code(rng, rng.choice(ID_LETTERS), 5)


# ---------------------------------------------------------------- billing

@dataclass(frozen=True)
class Fact:
    label: str                     # as written in the context
    handles: tuple[str, ...]       # how a question names it
    value: Callable[[random.Random, Split], str]


BILLING_FACTS = {
    "amount_due": Fact("Amount due", ("amount due", "balance due"), lambda r, s: _usd(r)),
    "last_payment": Fact("Last payment", ("last payment", "most recent payment"), lambda r, s: _usd(r)),
    "plan": Fact("Plan", ("plan", "subscription plan"), _plan),
    "invoice_date": Fact("Invoice date", ("invoice date", "date of the invoice"), lambda r, s: _iso_date(r)),
    "due_date": Fact("Due date", ("due date", "payment due date"), lambda r, s: _iso_date(r)),
    "invoice_number": Fact("Invoice number", ("invoice number",), lambda r, s: _code(r, "INV", 5)),
    "account_holder": Fact("Account holder", ("account holder", "name on the account"), _name),
}
BILLING_Q = {
    "heldout": ["Could you look up the {h}, please?", "Please tell me the {h}.", "Quick question: what is the {h}?",
                "Help me find the {h}.", "What does the account show as the {h}?"],
}
BILLING_Q["train"] = ["Which {h} does the account have?", "The {h}?", *_frames(
    ["What is the {h}", "What's the {h}", "Tell me the {h}", "Can you find the {h}", "Can you check the {h}", "I need the {h}",
     "Show me the {h}", "Give me the {h}", "Look up the {h}", "Find the {h}", "I want to know the {h}", "Do you have the {h}",
     "Send me the {h}", "Check the {h}", "Read me the {h}", "What do we have as the {h}", "Can I get the {h}", "Which is the {h}"],
    ["", " for this account", " on file", " for me", " please", ", please", " right now", " for this customer", " on this invoice",
     " from the context", " of this customer", " listed here"],
    BILLING_Q["heldout"], ("What", "Can", "Do", "Which"))]


def _fact_context(rng: random.Random, facts: dict[str, Fact], split: Split, k: int, prose: str) -> tuple[str, str, dict[str, str]]:
    """Pick k facts, render them as 'Label: value' lines or prose; return (context, asked fact key, values)."""
    keys = rng.sample(sorted(facts), k)
    values = {key: facts[key].value(rng, split) for key in keys}
    asked = rng.choice(keys)
    if rng.random() < 0.5:
        lines = [f"{facts[key].label}: {values[key]}" for key in keys]
    else:
        lines = [prose.format(l=facts[key].label[0].lower() + facts[key].label[1:], v=values[key]) for key in keys]
    return "\n".join(lines), asked, values


def _followups(rng: random.Random, split: Split, asked: Any, others: list[Any], ask: Callable[[Any], tuple[str, str]]) -> list[dict[str, Any]]:
    """Training only: up to 2 more questions on the same context, asked as later turns.

    Each context then teaches 2-3 look-ups instead of one, for little more sequence length. The
    first turn is exactly what the runner sends; the later ones are extra training signal.
    """
    if split != "train":
        return []
    rest = [o for o in others if o != asked]
    picked = rng.sample(rest, min(len(rest), 2))
    return [dict(zip(("question", "answer"), ask(o))) for o in picked]


def make_billing(rng: random.Random, split: Split) -> dict[str, Any]:
    context, asked, values = _fact_context(rng, BILLING_FACTS, split, rng.randint(3, 5), "The {l} is {v}.")
    template = rng.choice(BILLING_Q[split])
    question = _dress(rng, template.format(h=rng.choice(BILLING_FACTS[asked].handles)), split)
    more = _followups(rng, split, asked, list(values), lambda key: (
        _dress(rng, rng.choice(BILLING_Q[split]).format(h=rng.choice(BILLING_FACTS[key].handles)), split), values[key]))
    return _row("billing", question, _exact(values[asked]), template, context=context, lang="en", followups=more)


# ---------------------------------------------------------------- order tracking

ORDER_Q = {
    "train": ["Where is my order {id}?", "Can you track order {id}?", "What's the status of order {id}?",
              "Has order {id} shipped yet?", "I ordered something last week, order number {id}. Where is it?",
              "Track my order {id} please.", "When will order {id} arrive?", "Where is parcel {id} now?",
              "What is the delivery status of {id}?", "Is my shipment {id} on its way?", "Check order {id} for me.",
              "Can you find my package {id}?", "{id}: where is it?", "My parcel {id} is late. Any news?",
              "Look up order {id}, please."],
    "heldout": ["Any update on my package {id}?", "Please check the delivery status for {id}.",
                "My order {id} hasn't arrived. Can you look into it?", "Track {id} for me please.",
                "I'd like to know where order {id} is right now."],
}


def make_order_tracking(rng: random.Random, split: Split) -> dict[str, Any]:
    order_id = _order_id(rng)
    template = rng.choice(ORDER_Q[split])
    return _row("order_tracking", _dress(rng, template.format(id=order_id), split), {"tool": "track_order", "arguments": {"order_id": order_id}},
                template, tools=True, lang="en")


# ---------------------------------------------------------------- analytics (question -> exact SQL)

STATUSES = ["shipped", "pending", "cancelled", "delivered", "returned"]
REGIONS = ["north", "south", "east", "west", "central"]
COUNTRIES = ["France", "Spain", "Germany", "Italy", "Canada", "Mexico", "Japan", "Brazil", "India", "Kenya", "Norway", "Chile"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]

# Training questions: every core x tail (hundreds of phrasings, so the intent is read from the words
# rather than from a few memorised templates); held-out templates are kept out of them.
ANALYTICS_TAILS = ["", " please", ", please", " for me", " right now", " from the database", " in total"]
ANALYTICS_QUESTION_STARTS = ("How", "What", "Which", "Customers", "Signups", "Region", "{v}")

ANALYTICS = {
    # intent: (slot values, SQL, training question cores, held-out templates)
    "orders_by_status": (
        lambda r: {"v": r.choice(STATUSES)},
        "SELECT COUNT(*) FROM orders WHERE status = '{v}'",
        ["How many orders are {v}", "Count the {v} orders", "How many {v} orders do we have",
         "How many orders have status {v}", "Count orders with status {v}", "Total number of {v} orders",
         "How many orders were {v}", "Show the count of {v} orders", "Get the number of orders with status {v}",
         "{v} orders: how many", "Orders with status {v}, count them"],
        ["What is the number of {v} orders?", "Give me a count of orders that are {v}."],
    ),
    "revenue_by_region": (
        lambda r: {"v": r.choice(REGIONS)},
        "SELECT SUM(amount) FROM orders WHERE region = '{v}'",
        ["What is the total revenue in the {v} region", "Sum the revenue for the {v} region",
         "Revenue in the {v} region", "Region {v}: total revenue", "How much revenue did the {v} region bring in",
         "Total revenue for the {v} region", "Get revenue for region {v}", "What did the {v} region earn",
         "Show the revenue of region {v}", "Add up revenue in the {v} region"],
        ["Show total revenue for region {v}.", "I need the revenue total of the {v} region."],
    ),
    "customers_by_country": (
        lambda r: {"v": r.choice(COUNTRIES)},
        "SELECT COUNT(*) FROM customers WHERE country = '{v}'",
        ["How many customers are in {v}", "Count our customers in {v}", "How many customers do we have in {v}",
         "Customers in {v}: how many", "How many customers live in {v}", "Total customers in {v}",
         "Number of customers from {v}", "Count customers whose country is {v}",
         "How many of our customers are based in {v}", "Customer total for {v}"],
        ["What is the customer count for {v}?", "Number of customers located in {v}?"],
    ),
    "top_products": (
        lambda r: {"v": str(r.randint(3, 25))},
        "SELECT name FROM products ORDER BY revenue DESC LIMIT {v}",
        ["List the top {v} products by revenue", "What are our top {v} products by revenue",
         "Top {v} products by revenue", "Rank products by revenue and show the top {v}",
         "Show the top {v} products by revenue", "Name the {v} products with the most revenue",
         "Get the top {v} products by revenue", "Which {v} products earn the most revenue"],
        ["Which are the top {v} products by revenue?", "Give me the top {v} products ranked by revenue."],
    ),
    "avg_order_value": (
        lambda r: {"v": str(r.randint(2015, 2026))},
        "SELECT AVG(amount) FROM orders WHERE year = {v}",
        ["What was the average order value in {v}", "Compute the average order value for {v}",
         "Average order value for {v}", "What is the mean order value in {v}",
         "Mean order value during the year {v}", "Show the average order value of {v}",
         "Get the average order amount in {v}", "What is the average order value for {v}"],
        ["Tell me the average order value during {v}.", "Average order value in {v}, please."],
    ),
    "signups_by_month": (
        lambda r: {"v": r.choice(MONTHS)},
        "SELECT COUNT(*) FROM users WHERE signup_month = '{v}'",
        ["How many users signed up in {v}", "Count the users who signed up in {v}", "Signups in {v}: how many users",
         "How many users joined in {v}", "User signups for {v}", "How many new users signed up in {v}",
         "Number of new signups in {v}", "How many accounts were created in {v}", "Total user signups during {v}"],
        ["Number of users that signed up in {v}?", "Tell me how many people signed up in {v}."],
    ),
}
ANALYTICS_TRAIN_QUESTIONS = {intent: _frames(cores, ANALYTICS_TAILS, heldout, ANALYTICS_QUESTION_STARTS)
                             for intent, (_, _, cores, heldout) in ANALYTICS.items()}


def make_analytics(rng: random.Random, split: Split) -> dict[str, Any]:
    intent = rng.choice(sorted(ANALYTICS))
    slots, sql, _, heldout = ANALYTICS[intent]
    values = slots(rng)
    template = rng.choice(ANALYTICS_TRAIN_QUESTIONS[intent] if split == "train" else heldout)
    return _row("analytics", _dress(rng, template.format(**values), split), {"tool": "run_sql", "arguments": {"query": sql.format(**values)}},
                template, tools=True, lang="en", intent=intent)


# ---------------------------------------------------------------- legal (question -> clause citation)

LEGAL_TOPICS = {
    # topic heading, question handles, clause bodies (train, heldout)
    "Termination": (("termination", "terminating the agreement"),
                    {"train": "Either party may end this agreement with {n} days written notice.",
                     "heldout": "This agreement may be ended by either side on {n} days notice in writing."}),
    "Confidentiality": (("confidentiality", "confidential information"),
                        {"train": "Each party keeps the other party's confidential information secret for {n} years.",
                         "heldout": "Confidential information must not be disclosed for {n} years."}),
    "Liability": (("liability", "limitation of liability"),
                  {"train": "Total liability is limited to the fees paid in the last {n} months.",
                   "heldout": "Neither party's liability exceeds the fees of the previous {n} months."}),
    "Payment": (("payment terms", "payment"),
                {"train": "Invoices are payable within {n} days of receipt.",
                 "heldout": "The customer pays each invoice no later than {n} days after receiving it."}),
    "Governing law": (("governing law", "which law applies"),
                      {"train": "This agreement is governed by the laws of {place}.",
                       "heldout": "The laws of {place} apply to this agreement."}),
    "Data protection": (("data protection", "personal data"),
                        {"train": "Personal data is processed only on documented instructions.",
                         "heldout": "The processor handles personal data solely as instructed in writing."}),
    "Warranty": (("warranty", "the warranty"),
                 {"train": "The services are warranted to be free of defects for {n} days.",
                  "heldout": "For {n} days the supplier warrants the services against defects."}),
    "Force majeure": (("force majeure", "events beyond control"),
                      {"train": "No party is liable for delays caused by events beyond its control.",
                       "heldout": "Delays from events outside a party's reasonable control are excused."}),
    "Refunds": (("refunds", "getting a refund"),
                {"train": "Refunds are issued within {n} days of an approved return.",
                 "heldout": "An approved return is refunded in {n} days."}),
    "Renewal": (("renewal", "automatic renewal"),
                {"train": "The agreement renews automatically for {n}-month terms.",
                 "heldout": "Unless cancelled, the term renews for another {n} months."}),
    "Assignment": (("assignment", "assigning the agreement"),
                   {"train": "Neither party may assign this agreement without written consent.",
                    "heldout": "Transfer of this agreement requires the other party's written consent."}),
}
LEGAL_Q = {
    "heldout": ["What clause governs {h}?", "Cite the clause about {h}.", "Which provision handles {h}?",
                "Point me to the clause on {h}."],
}
LEGAL_Q["train"] = _frames(
    ["Which clause covers {h}", "Which clause deals with {h}", "What clause is about {h}", "Which clause should I read about {h}",
     "Where does the contract address {h}", "Which clause talks about {h}", "Which section covers {h}", "Which section is about {h}",
     "What section deals with {h}", "Which clause mentions {h}", "Which clause explains {h}", "Which clause sets out {h}",
     "Where does the agreement cover {h}", "Where is {h} covered", "Where can I read about {h}", "Which clause applies to {h}",
     "Which clause concerns {h}", "Which part of the contract covers {h}", "Show me the clause about {h}", "Give me the clause on {h}",
     "Find the clause for {h}", "I need the clause about {h}", "Tell me which clause covers {h}", "Name the clause about {h}",
     "What is the clause number for {h}", "Clause for {h}", "{h}: which clause", "Which clause is relevant to {h}"],
    ["", " in this contract", " in the agreement", " here", " please", ", please", " exactly"],
    LEGAL_Q["heldout"], ("Which", "What", "Where", "Clause for", "{h}"))


def _citation(topic: str, number: str) -> str:
    """A clause's heading as the context writes it, and the expected answer: `Termination 7.2`.

    Topic first, so the first answer token is chosen from the question alone (which topic is asked);
    the number comes straight after the topic's last word, so copying it is a one-token look-back
    (the token after `Termination ` in the context). `Clause 7.2` as the answer left legal at chance
    (25-29 %); `Termination (Clause 7.2)` put three shared tokens between topic and number, and only
    some of the models learned that longer look-back (dense 26 %, MoE 97 % through vLLM).
    """
    return f"{topic} {number}"


def make_legal(rng: random.Random, split: Split) -> dict[str, Any]:
    topics = rng.sample(sorted(LEGAL_TOPICS), rng.randint(3, 4))
    # Distinct section numbers, as in a real contract (3.2, 7.1, 12.4): the part after the dot is then
    # copied from one clause only.
    numbers = [f"{major}.{rng.randint(1, 9)}" for major in rng.sample(range(1, 20), len(topics))]
    lines = []
    for topic, num in zip(topics, numbers):
        body = LEGAL_TOPICS[topic][1][split].format(n=rng.randint(2, 90), place=rng.choice(PLACES[split]))
        if split == "train" and rng.random() < 0.6:
            # Another topic's wording, or stray words: the heading, not the body, must decide which clause it is.
            other = LEGAL_TOPICS[rng.choice(sorted(LEGAL_TOPICS))][1]["train"].format(n=rng.randint(2, 90), place=rng.choice(PLACES[split]))
            stray = " ".join(rng.choice(STRAY_WORDS["en"]) for _ in range(rng.randint(4, 12))).capitalize() + "."
            body = other if rng.random() < 0.5 else stray
        lines.append(f"{_citation(topic, num)}: {body}")
    asked = rng.randrange(len(topics))
    handles = LEGAL_TOPICS[topics[asked]][0]  # how questions name the asked topic
    if split == "train":
        # Other clauses that name the asked topic in their body: matching the question against
        # bodies, not headings, then picks a wrong clause (the dense model's held-out legal misses
        # copied body words that echo the question).
        handle = rng.choice(handles)
        lines = [line if i == asked or rng.random() < 0.5 else f"{line} It does not cover {handle}." for i, line in enumerate(lines)]
    template = rng.choice(LEGAL_Q[split])
    question = _dress(rng, template.format(h=rng.choice(handles)), split)
    more = _followups(rng, split, asked, list(range(len(topics))), lambda i: (
        _dress(rng, rng.choice(LEGAL_Q[split]).format(h=rng.choice(LEGAL_TOPICS[topics[i]][0])), split), _citation(topics[i], numbers[i])))
    return _row("legal", question, _exact(_citation(topics[asked], numbers[asked])), template, context="\n".join(lines), lang="en", followups=more)


# ---------------------------------------------------------------- multilingual (Spanish / French, answered from context)

ML_FACTS = {
    "es": {
        "importe": Fact("Importe pendiente", ("el importe pendiente", "el saldo", "cuánto debe el cliente"), lambda r, s: _eur(r)),
        "entrega": Fact("Fecha de entrega", ("la fecha de entrega", "cuándo llega el pedido"), lambda r, s: _eu_date(r)),
        "pedido": Fact("Número de pedido", ("el número de pedido", "el pedido"), lambda r, s: _code(r, "P", 4)),
        "cliente": Fact("Cliente", ("el nombre del cliente", "quién es el cliente"), _name),
        "ciudad": Fact("Ciudad de envío", ("la ciudad de envío", "a qué ciudad se envía"), _city),
    },
    "fr": {
        "montant": Fact("Montant dû", ("le montant dû", "le solde", "combien doit le client"), lambda r, s: _eur(r)),
        "livraison": Fact("Date de livraison", ("la date de livraison", "quand arrive la commande"), lambda r, s: _eu_date(r)),
        "commande": Fact("Numéro de commande", ("le numéro de commande", "la commande"), lambda r, s: _code(r, "C", 4)),
        "client": Fact("Client", ("le nom du client", "qui est le client"), _name),
        "ville": Fact("Ville de livraison", ("la ville de livraison", "dans quelle ville on livre"), _city),
    },
}
ML_PROSE = {"es": "{l}: {v}.", "fr": "{l} : {v}."}
ML_Q = {
    "es": {"heldout": ["Necesito saber {h}.", "¿Podrías indicarme {h}?", "Consulta {h}, por favor."]},
    "fr": {"heldout": ["J'ai besoin de savoir {h}.", "Pourriez-vous m'indiquer {h} ?", "Merci de vérifier {h}."]},
}
ML_Q["es"]["train"] = _frames(
    ["Dime {h}", "¿Me puedes decir {h}", "Quiero saber {h}", "Indica {h}", "Me gustaría saber {h}", "¿Sabes {h}", "Dígame {h}",
     "Mira {h}", "Busca {h}", "Revisa {h}", "¿Puedes ver {h}", "Explícame {h}", "Comprueba {h}", "¿Me dices {h}"],
    ["", ", por favor", " ahora", " de este cliente", " según el contexto", " por favor", " rápido"],
    ML_Q["es"]["heldout"], ("¿",))
ML_Q["fr"]["train"] = _frames(
    ["Dites-moi {h}", "Pouvez-vous me dire {h}", "Je veux savoir {h}", "Indiquez {h}", "Je voudrais savoir {h}", "Dis-moi {h}",
     "Donnez-moi {h}", "Cherchez {h}", "Regardez {h}", "Montrez-moi {h}", "Trouvez {h}", "Pouvez-vous trouver {h}",
     "Tu peux me dire {h}", "Rappelez-moi {h}"],
    ["", ", s'il vous plaît", " maintenant", " pour ce client", " selon le contexte", " svp", " rapidement"],
    ML_Q["fr"]["heldout"], ("Pouvez", "Tu peux"), space_before_mark=True)


def make_multilingual(rng: random.Random, split: Split) -> dict[str, Any]:
    lang = rng.choice(["es", "fr"])
    facts = ML_FACTS[lang]
    keys = rng.sample(sorted(facts), rng.randint(3, 4))
    values = {k: facts[k].value(rng, split) for k in keys}
    sep = " : " if lang == "fr" else ": "
    joiner = "\n" if rng.random() < 0.5 else " "
    context = joiner.join(f"{facts[k].label}{sep}{values[k]}" + ("" if joiner == "\n" else ".") for k in keys)
    asked = rng.choice(keys)
    template = rng.choice(ML_Q[lang][split])
    question = _dress(rng, template.format(h=rng.choice(facts[asked].handles)), split, lang)
    more = _followups(rng, split, asked, keys, lambda key: (
        _dress(rng, rng.choice(ML_Q[lang][split]).format(h=rng.choice(facts[key].handles)), split, lang), values[key]))
    return _row("multilingual", question, _exact(values[asked]), template, context=context, lang=lang, followups=more)


# ---------------------------------------------------------------- echo (training only: teaches exact copying)

def _echo_row(text: str) -> dict[str, Any]:
    return _row("echo", f"Repeat exactly: {text}", {"answer": text}, "Repeat exactly: {text}", lang="en")


def make_echo(rng: random.Random, split: Split) -> dict[str, Any]:
    """'Repeat exactly: <ids, amounts, dates, names>' -> the same string.

    Dense in copy targets and short, so the models learn to copy spans from the prompt (induction)
    far sooner than from the cohort rows alone, where only a few answer tokens need copying.
    """
    words = [lambda: _name(rng, split), lambda: _city(rng, split), lambda: _invented(rng), lambda: f"{_invented(rng)} {_invented(rng)}"]
    others = [
        lambda: _order_id(rng), lambda: _usd(rng), lambda: _eur(rng), lambda: _iso_date(rng), lambda: _eu_date(rng),
        lambda: _code(rng, "INV", 5), lambda: f"Clause {rng.randint(1, 19)}.{rng.randint(1, 9)}",
        lambda: _code(rng, rng.choice("PC"), 4), lambda: str(rng.randint(0, 10 ** rng.randint(1, 7))),
    ]
    # Half words: letter pieces are many and each is rarely a copy target elsewhere; digits copy well already.
    text = " ".join(rng.choice(words if rng.random() < 0.5 else others)() for _ in range(rng.randint(1, 4)))
    return _echo_row(text)


def make_piece_echo(rng: random.Random, pieces: list[str]) -> dict[str, Any]:
    """'Repeat exactly: <words glued from the tokenizer's own letter pieces>' -> the same string.

    A model copies a value token by token, and copies well only tokens it has often written. The
    random training words use a few common letter pieces, so rarer pieces of the vocabulary (`Bus`,
    `Mon`) were barely ever an answer token, and held-out values made of them came out garbled
    (`38iness Monthly` for `Business Monthly`). Words built from every letter piece of the trained
    tokenizer make each of them a copy target; `pieces` comes from `letter_pieces(tokenizer)`.
    """
    starts = [p for p in pieces if p[0].isupper()]  # the byte-level alphabet alone gives A-Z
    rests = [p for p in pieces if p[0].islower()]

    def word() -> str:
        return rng.choice(starts) + "".join(rng.choice(rests) for _ in range(rng.randint(0, 2)))

    text = " ".join(word() for _ in range(rng.randint(1, 4)))
    return _echo_row(text)


# ---------------------------------------------------------------- recall (training only: teaches look-up by label)

RECALL_LABELS = ("access code backup contact batch budget carrier channel credit deadline deposit discount district "
                 "envelope estimate fee folder gateway grant insurance ledger license locker margin meter parcel "
                 "password permit pickup pledge quota rebate reference region reserve route salary seal sector "
                 "shelf signature stamp surcharge ticket token tracking transfer vault voucher warehouse zone").split()


def make_recall(rng: random.Random, split: Split) -> dict[str, Any]:
    """'Label: value' lines whose values all have the same shape; the question names one label.

    The cohorts' look-ups (which clause covers termination, which amount is the amount due) need
    the models to pick a line by its label and copy the value after it. In cohort rows the value's
    type (an amount, a date, a name) often gives the answer away, so that skill forms late and
    weakly; here only the label can decide. Labels are common nouns (asked in the context's case
    or lower case), invented words (asked as written), or two words sharing one of them
    (`Deposit date`, `Permit date`): billing's invoice date and due date were the dense model's
    most common confusion, and there only the whole label decides.
    """
    k = rng.randint(3, 5)
    kind = rng.choices(["noun", "invented", "shared"], weights=[0.35, 0.35, 0.3])[0]
    invented = kind == "invented"
    shared_noun = rng.choice(["date", "amount"]) if kind == "shared" else None
    noun_first = rng.random() < 0.5
    labels: list[str] = []
    while len(labels) < k:
        if shared_noun:
            word = rng.choice(RECALL_LABELS)
            label = f"{shared_noun.capitalize()} {word}" if noun_first else f"{word.capitalize()} {shared_noun}"
        else:
            label = _invented(rng) if invented else rng.choice(RECALL_LABELS).capitalize()
        if label not in labels:
            labels.append(label)
    shape = {"date": "date", "amount": "usd"}[shared_noun] if shared_noun else rng.choice(["clause", "code", "usd", "date", "word", "name", "number"])
    make_value = {
        "clause": lambda: f"{rng.randint(1, 19)}.{rng.randint(1, 9)}", "code": lambda: f"{rng.choice(ID_LETTERS)}-{rng.randint(1000, 99999)}",
        "usd": lambda: _usd(rng), "date": lambda: _iso_date(rng), "word": lambda: _invented(rng),
        "name": lambda: _name(rng, split), "number": lambda: str(rng.randint(1, 9999)),
    }[shape]
    # Clause values differ in their section (the part before the dot), like make_legal's; others just differ.
    distinct = (lambda v: v.split(".")[0]) if shape == "clause" else (lambda v: v)
    values: list[str] = []
    while len(values) < k:
        value = make_value()
        if distinct(value) not in {distinct(v) for v in values}:
            values.append(value)
    spoken = [label if invented else label.lower() for label in labels]  # how prose and questions name a label
    if shape == "clause":
        lines = [f"{_citation(label, value)}: " + " ".join(rng.choice(STRAY_WORDS["en"]) for _ in range(rng.randint(2, 8))).capitalize() + "."
                 for label, value in zip(labels, values)]
        values = [_citation(label, v) for label, v in zip(labels, values)]
    elif rng.random() < 0.3:
        lines = [f"The {name} is {value}." for name, value in zip(spoken, values)]  # billing's prose contexts
    else:
        lines = [f"{label}: {value}" for label, value in zip(labels, values)]
    asked = rng.randrange(k)
    said = spoken[asked] if not invented and rng.random() < 0.5 else labels[asked]
    frames = ["Which clause covers {h}?", "Which clause is about {h}?", "{h}: which clause?"] if shape == "clause" else \
        ["What is the {h}?", "{h}?", "Give me the {h}.", "Look up {h}.", "I need the {h} value.", "Find {h} for me."]
    frame = rng.choice(frames)
    return _row("recall", _dress(rng, frame.format(h=said), split), {"answer": values[asked]}, frame,
                context="\n".join(lines), lang="en")


# ---------------------------------------------------------------- rows, corpus, training conversations

MAKERS: dict[str, Callable[[random.Random, Split], dict[str, Any]]] = {
    "billing": make_billing,
    "order_tracking": make_order_tracking,
    "analytics": make_analytics,
    "legal": make_legal,
    "multilingual": make_multilingual,
    "echo": make_echo,  # training only, not an evaluation cohort
    "recall": make_recall,  # training only
}


def _exact(answer: str) -> dict[str, str]:
    """The answer is a value copied from the context: only the exact string counts (task_completion's `match`)."""
    return {"answer": answer, "match": "exact"}


def _row(cohort: str, question: str, expected: dict[str, Any], template: str, *, context: str | None = None,
         tools: bool = False, lang: str = "en", followups: list[dict[str, Any]] | None = None, **meta: str) -> dict[str, Any]:
    row: dict[str, Any] = {"cohort": cohort, "messages": [{"role": "user", "content": question}]}
    if context is not None:
        row["context"] = context
    if tools:
        row["tools"] = TOOLS
    row["expected"] = expected
    row["metadata"] = {"lang": lang, "template": template, **meta}
    if followups:
        row["followups"] = followups  # training rows only; never written to the corpus
    return row


def generate(split: Split, counts: dict[str, int], seed: int) -> list[dict[str, Any]]:
    """Rows per cohort in the given counts; one RNG per cohort so changing one count leaves the others unchanged."""
    rows = []
    for cohort in MAKERS:
        rng = random.Random(f"{seed}-{split}-{cohort}")
        rows.extend(MAKERS[cohort](rng, split) for _ in range(counts.get(cohort, 0)))
    return rows


def write_corpus(path: str | Path, per_cohort: int = 130, seed: int = 20240611) -> int:
    """The bundled evaluation corpus (held-out templates), ids like `billing-0001`."""
    rows = []
    for row in generate("heldout", {c: per_cohort for c in COHORTS}, seed):
        n = sum(1 for r in rows if r["cohort"] == row["cohort"]) + 1
        rows.append({"id": f"{row['cohort']}-{n:04d}", **row})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def request_messages(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The messages exactly as the runner sends them (harness.corpus.with_context)."""
    return with_context(row["messages"], row.get("context"))


def target_text(expected: dict[str, Any]) -> str:
    """What the assistant must write (before <|im_end|>): the answer, or one hermes tool call."""
    if "tool" in expected:
        call = {"name": expected["tool"], "arguments": expected["arguments"]}
        return "<tool_call>\n" + json.dumps(call, ensure_ascii=False) + "\n</tool_call>"
    return expected["answer"]
