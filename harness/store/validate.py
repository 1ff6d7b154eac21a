"""Rows checked against the schema before a batch is written, so one bad value costs one row, not the batch.

Each value is checked (and where nothing is lost, converted) for its column's SQL type in
schema.py: text must be valid Unicode, integers must fit their column, numbers must be numbers,
JSON columns get JSON text. Values that cannot be stored are set to NULL and the row is noted.
A `responses` row with such a value becomes an error row (`error_type = 'invalid_row'` unless
the call had failed already, the message naming each column), so the call is visible and
`--resume` sends it again; other tables keep the row with NULL there. A row whose key cannot be
stored is dropped and counted. Text with unpaired surrogates is stored with U+FFFD in their place
(and noted the same way). Known secrets are redacted in the same pass (redact.py).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from harness.store.redact import Redactor
from harness.store.schema import TABLES, columns

INT_RANGE = {"BIGINT": (-(2**63), 2**63 - 1), "INTEGER": (-(2**31), 2**31 - 1)}


class BadValue(ValueError):
    """A value the column cannot take; `replacement` (if any) is stored instead of NULL."""

    def __init__(self, message: str, replacement: Any = None):
        super().__init__(message)
        self.replacement = replacement


_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(text: str) -> bool:
    """Whether the text can be written as UTF-8 (Python strings may hold surrogates from JSON escapes)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def repair_unicode(text: str) -> tuple[str, bool]:
    """Surrogate pairs split over two JSON escapes joined again, unpaired ones replaced by U+FFFD;
    and whether anything was lost."""
    joined = text.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")
    repaired = _SURROGATE.sub("\ufffd", joined)
    return repaired, repaired != joined


def _fix_text(v: str) -> str:
    if valid_unicode(v):
        return v
    repaired, lossy = repair_unicode(v)
    if lossy:
        raise BadValue("unpaired UTF-16 surrogates replaced by U+FFFD", replacement=repaired)
    return repaired


def _text(v: Any) -> str:
    if isinstance(v, str):
        return _fix_text(v)
    if isinstance(v, (bool, numbers.Number)):
        return str(v)  # nothing lost: the number as text
    raise BadValue(f"{_kind(v)} is not text")


def _int(sql: str) -> Callable[[Any], int]:
    lo, hi = INT_RANGE[sql]

    def check(v: Any) -> int:
        if type(v) is int and lo <= v <= hi:  # nearly every value: no ABC check (a flush checks ~40 per row)
            return v
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise BadValue(f"{_kind(v)} is not an integer")
        v = int(v)
        if not lo <= v <= hi:
            raise BadValue(f"{_clip(v)} is out of range for {sql}")
        return v
    return check


def _double(v: Any) -> float:
    if type(v) is float:
        return v
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise BadValue(f"{_kind(v)} is not a number")
    try:
        return float(v)
    except OverflowError:
        raise BadValue(f"{_clip(v)} is out of range for DOUBLE") from None


def _bool(v: Any) -> bool:
    if isinstance(v, bool) or type(v).__name__ == "bool_":  # numpy's bool too
        return bool(v)
    raise BadValue(f"{_kind(v)} is not a boolean")


def _timestamp(v: Any) -> Any:
    if isinstance(v, _dt.datetime):
        return v
    if isinstance(v, str):  # ISO text, parsed here: text DuckDB cannot cast would refuse the whole row
        try:
            t = _dt.datetime.fromisoformat(v.strip())
        except ValueError:
            raise BadValue(f"{_kind(v)} is not an ISO timestamp") from None
        return t if t.tzinfo else t.replace(tzinfo=_dt.timezone.utc)
    raise BadValue(f"{_kind(v)} is not a timestamp")


def _json(v: Any) -> str:
    if isinstance(v, str):
        return _fix_text(v)
    try:
        text = json.dumps(v, ensure_ascii=False, default=str)
    except (ValueError, TypeError, RecursionError) as e:
        raise BadValue(f"{_kind(v)} cannot be written as JSON ({e})") from None
    return _fix_text(text)  # outside the try: its BadValue carries the repaired text


def _list(item: Callable[[Any], Any]) -> Callable[[Any], list]:
    def check(v: Any) -> list:
        if hasattr(v, "tolist"):
            v = v.tolist()
        if not isinstance(v, (list, tuple)):
            raise BadValue(f"{_kind(v)} is not a list")
        return [None if x is None else item(x) for x in v]
    return check


def _kind(v: Any) -> str:
    return f"{type(v).__name__} {_clip(v)}"


def _clip(v: Any, n: int = 60) -> str:
    text = repr(v)
    return text if len(text) <= n else text[:n] + "..."


CHECKS: dict[str, Callable[[Any], Any]] = {
    "VARCHAR": _text, "JSON": _json, "BIGINT": _int("BIGINT"), "INTEGER": _int("INTEGER"), "DOUBLE": _double,
    "BOOLEAN": _bool, "TIMESTAMPTZ": _timestamp,
    "BIGINT[]": _list(_int("BIGINT")), "DOUBLE[]": _list(_double), "VARCHAR[]": _list(_text),
}


@functools.cache
def column_types(table: str) -> dict[str, str]:
    """Column -> SQL type, from the table's declaration in schema.py."""
    types = {}
    for line in TABLES[table].splitlines():
        parts = line.split("--")[0].split()
        if len(parts) >= 2 and parts[0].upper() != "PRIMARY":
            types[parts[0]] = parts[1].rstrip(",")
    return types


@functools.cache
def key_columns(table: str) -> tuple[str, ...]:
    """The table's key (empty for append-only tables)."""
    body = TABLES[table]
    if "PRIMARY KEY (" in body:
        return tuple(c.strip() for c in body.split("PRIMARY KEY (")[1].split(")")[0].split(","))
    return tuple(line.split()[0] for line in body.splitlines() if "PRIMARY KEY" in line.split("--")[0])


@dataclass
class Problems:
    """One batch's outcome: rows written, stored with a value set to NULL (repaired), dropped, and why (a few)."""

    written: int = 0
    repaired: int = 0
    rejected: int = 0
    examples: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        if len(self.examples) < 20:
            self.examples.append(message)


def clean_rows(table: str, rows: Sequence[dict[str, Any]], redactor: Redactor | None = None,
               problems: Problems | None = None) -> list[dict[str, Any]]:
    """The rows as they can be stored: values checked and converted, bad ones NULL, secrets redacted."""
    checks = [(c, CHECKS.get(t)) for c, t in column_types(table).items()]
    keys = key_columns(table)
    redact = redactor.text if redactor else None
    out = []
    for row in rows:
        clean: dict[str, Any] = {}
        bad: list[str] = []
        for col, check in checks:
            v = row.get(col)
            if v is None:
                continue
            if check is not None:
                try:
                    v = check(v)
                except BadValue as e:
                    bad.append(redact(f"{col}: {e}") if redact else f"{col}: {e}")  # the message quotes the value
                    if e.replacement is None:
                        continue
                    v = e.replacement
            if redact is not None:
                if type(v) is str:
                    v = redact(v)
                elif type(v) is list and any(type(x) is str for x in v):
                    v = [redact(x) if type(x) is str else x for x in v]
            clean[col] = v
        if bad:
            if problems is None:
                problems = Problems()
            if any(k not in clean for k in keys):
                problems.rejected += 1
                problems.note(f"{table} row dropped (its key cannot be stored): " + "; ".join(bad))
                continue
            problems.repaired += 1
            problems.note(f"{table} {tuple(clean[k] for k in keys)}: " + "; ".join(bad))
            mark = MARK_BAD_ROW.get(table)
            if mark:
                mark(clean, bad, redact)
        out.append(clean)
    return out


def _mark_response(row: dict[str, Any], bad: list[str], redact: Callable[[str], str] | None) -> None:
    note = "not stored as sent: " + "; ".join(bad)
    note = redact(note) if redact else note
    if row.get("error_type") is None:
        row["error_type"] = "invalid_row"
        row["error_message"] = note
    else:
        row["error_message"] = f"{row.get('error_message') or ''}; {note}"


def _mark_span(row: dict[str, Any], bad: list[str], redact: Callable[[str], str] | None) -> None:
    note = "not stored as sent: " + "; ".join(bad)
    row["status_message"] = redact(note) if redact else note


# Tables whose rows say so when a value could not be stored (others keep NULL there).
MARK_BAD_ROW: dict[str, Callable[[dict[str, Any], list[str], Callable[[str], str] | None], None]] = {
    "responses": _mark_response,
    "spans": _mark_span,
}


def minimal_row(table: str, row: dict[str, Any], reason: str, bare: bool = False) -> dict[str, Any] | None:
    """For a row the database refused although it passed the checks: its key, a few identifying
    columns and why. `bare`: the key and why only (the identifying columns were refused too)."""
    keys = key_columns(table)
    if not keys:
        return None
    out = {k: row.get(k) for k in keys}
    if bare:
        if table == "responses":
            out["error_type"] = row.get("error_type") or "invalid_row"
            out["error_message"] = f"not stored as sent: {reason}"[:2000]
        elif table == "spans":
            out["status_message"] = f"not stored as sent: {reason}"[:2000]
    elif table == "responses":
        for k in ("role", "cohort", "model", "started_at", "attempts", "trace_id", "span_id"):
            out[k] = row.get(k)
        out["error_type"] = row.get("error_type") or "invalid_row"
        out["error_message"] = f"not stored as sent: {reason}"[:2000]
    elif table == "spans":
        for k in ("name", "kind", "run_id", "route", "prompt_id", "sample", "start_time", "end_time"):
            out[k] = row.get(k)
        out["status_message"] = f"not stored as sent: {reason}"[:2000]
    return out


__all__ = ["BadValue", "Problems", "clean_rows", "column_types", "columns", "key_columns", "minimal_row"]
