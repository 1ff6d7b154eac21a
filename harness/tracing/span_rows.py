"""One span -> one `spans` row: the single definition the store exporter and the OTLP receiver share.

Attributes are kept whole as JSON; the ones reports filter on are copied into typed columns, so
queries need no JSON parsing. A serving engine's per-request span also gets the typed timing
columns its engine maps (`extra`, from harness/serving/engines/).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Mapping

# Typed column -> the attribute keys it is read from, first present wins.
TYPED_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "run_id": ("routecheck.run_id",),
    "route": ("routecheck.route",),
    "prompt_id": ("routecheck.prompt_id",),
    "cohort": ("routecheck.cohort",),
    "sample": ("routecheck.sample",),
    "input_tokens": ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"),
    "output_tokens": ("gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"),
    "ttft_s": ("routecheck.time_to_first_token_s",),
    "error_type": ("error.type",),
}
_INT_COLUMNS = {"sample", "input_tokens", "output_tokens"}
_FLOAT_COLUMNS = {"ttft_s"}
_TEXT_COLUMNS = {"run_id", "route", "prompt_id", "cohort", "error_type"}
# json.dumps(..., default=str, ensure_ascii=False) builds this encoder on every call; the text is the same.
_ATTRIBUTES_JSON = json.JSONEncoder(ensure_ascii=False, default=str)


def ns_to_datetime(ns: int | None) -> datetime | None:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc) if ns else None


def _typed(column: str, value: Any) -> Any:
    """A typed column's value, or None where the attribute has the wrong type (never raises)."""
    if value is None:
        return None
    try:
        if column in _INT_COLUMNS:
            return int(value) if not isinstance(value, bool) else None
        if column in _FLOAT_COLUMNS:
            return float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return str(value) if column in _TEXT_COLUMNS else value


def span_row(
    trace_id: str,
    span_id: str,
    parent_span_id: str | None,
    name: str,
    kind: str,
    service_name: str | None,
    start_ns: int | None,
    end_ns: int | None,
    status_code: str,
    status_message: str | None,
    attributes: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `spans` row for one span; ids are lower-case hex (32 and 16 digits)."""
    # One plain copy: the SDK's attribute mapping answers each lookup in Python.
    attrs = attributes if type(attributes) is dict else dict(attributes)
    row: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent_span_id or None,
        "name": name,
        "kind": kind,
        "service_name": service_name,
        "start_time": ns_to_datetime(start_ns),
        "end_time": ns_to_datetime(end_ns),
        "duration_s": (end_ns - start_ns) / 1e9 if start_ns and end_ns else None,
        "status_code": status_code,
        "status_message": status_message or None,
        "attributes": _ATTRIBUTES_JSON.encode(attrs),
    }
    for column, keys in TYPED_ATTRIBUTES.items():
        value = None
        for k in keys:
            value = attrs.get(k)
            if value is not None:
                break
        row[column] = _typed(column, value)
    if extra:
        row.update({k: v for k, v in extra.items() if v is not None or k not in row})
    return row
