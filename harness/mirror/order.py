"""The order in which a run sends its prompts, and the warm-up prompts before it.

File order lets each cohort own a time window (a corpus sorted by cohort sends one cohort while
the servers warm up, the next while a neighbour loads the machine), so a route's slow minute turns
into one cohort's regression. `shuffle` (the default) spreads every cohort over the whole run;
`interleave-cohorts` takes the cohorts in turn. Both hold the selected rows in memory; `file`
streams them.
"""

from __future__ import annotations

import itertools
import random
import secrets
from typing import Iterable, Iterator, Literal, TypeVar

from harness.corpus import PromptRecord

Order = Literal["shuffle", "file", "interleave-cohorts"]
ORDERS: tuple[str, ...] = ("shuffle", "file", "interleave-cohorts")
DEFAULT_WARMUP = 2  # warm-up calls per route before measurement

T = TypeVar("T")


def new_seed() -> int:
    """A seed for a run that names none; recorded in the run so the order can be replayed."""
    return secrets.randbelow(2**31)


def ordered(records: Iterable[PromptRecord], order: str, seed: int | None) -> Iterator[PromptRecord]:
    """The records in sending order."""
    if order == "file":
        yield from records
    elif order == "shuffle":
        rows = list(records)
        random.Random(seed).shuffle(rows)
        yield from rows
    elif order == "interleave-cohorts":
        by_cohort: dict[str, list[PromptRecord]] = {}
        for r in records:
            by_cohort.setdefault(r.cohort or "", []).append(r)
        for turn in itertools.zip_longest(*by_cohort.values()):
            yield from (r for r in turn if r is not None)
    else:
        raise ValueError(f"unknown order {order!r}; known: {', '.join(ORDERS)}")


def peek(items: Iterator[T], n: int) -> tuple[list[T], Iterator[T]]:
    """The first n items, and an iterator that still yields all of them."""
    head = list(itertools.islice(items, n))
    return head, itertools.chain(head, items)
