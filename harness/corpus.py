"""The prompt corpus: JSONL, CSV or Parquet rows read as a stream and validated one by one."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harness.config import ConfigError, key_text

CONTEXT_PREAMBLE = "Answer using only the context below.\n\nContext:\n"


def content_text(content: Any) -> str:
    """A message's text, defined once: a string, or the text parts of a list of content parts
    (OpenAI's form, which the openai client and `vllm bench serve` send), images and audio skipped."""
    if isinstance(content, list):
        return " ".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return content if isinstance(content, str) else ""


def with_context(messages: list[dict[str, Any]], context: str | None) -> list[dict[str, Any]]:
    """The prompt format, defined once: the context, when present, goes into the system turn
    (appended to an existing one; a text part added to a list of parts). The testbed trains on
    exactly this (testbed/data.py)."""
    msgs = [dict(m) for m in messages]
    if context:
        if msgs and msgs[0].get("role") == "system":
            first = msgs[0].get("content")
            if isinstance(first, list):
                msgs[0]["content"] = [*first, {"type": "text", "text": "\n\nContext:\n" + context}]
            else:
                msgs[0]["content"] = (first or "") + "\n\nContext:\n" + context
        else:
            msgs.insert(0, {"role": "system", "content": CONTEXT_PREAMBLE + context})
    return msgs


class CorpusError(ConfigError):
    """A bad corpus row; the message is `file:line: what was wrong`."""


CONTENT_PART_TYPES = ("text", "image_url", "input_audio", "file")


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "user", "assistant", "tool"]
    # A string, or OpenAI's list of content parts ({"type": "text", "text": ...},
    # {"type": "image_url", "image_url": {"url": ...}}, ...), stored and sent as given.
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _parts(cls, content: Any) -> Any:
        if not isinstance(content, list):
            return content
        for i, part in enumerate(content):
            kind = part.get("type")
            if kind not in CONTENT_PART_TYPES:
                raise ValueError(f"content[{i}]: 'type' must be one of {', '.join(CONTENT_PART_TYPES)}, got {kind!r}")
            if kind == "text" and not isinstance(part.get("text"), str):
                raise ValueError(f"content[{i}]: a text part needs 'text' (a string)")
            image = part.get("image_url")
            if kind == "image_url" and not (isinstance(image, dict) and isinstance(image.get("url"), str)):
                raise ValueError(f"content[{i}]: an image_url part needs 'image_url': {{'url': ...}}")
        return content


class Expected(BaseModel):
    model_config = ConfigDict(extra="allow")
    answer: str | None = None
    tool: str | list[str] | None = None
    arguments: dict[str, Any] | list[dict[str, Any]] | None = None
    # Agent rows: the tool-calling steps expected before the final answer, each in BFCL's
    # possible-answer form ([{function: {param: [accepted values]}}, ...]; one dict = one call).
    steps: list[list[dict[str, dict[str, list[Any]]]]] | None = None

    @field_validator("steps", mode="before")
    @classmethod
    def _one_call_steps(cls, steps: Any) -> Any:
        if not isinstance(steps, list):
            return steps
        out = [[s] if isinstance(s, dict) else s for s in steps]
        for i, step in enumerate(out):
            for call in step if isinstance(step, list) else []:
                if isinstance(call, dict) and len(call) != 1:
                    raise ValueError(f"steps[{i}]: each call is {{function_name: {{param: [accepted values]}}}}, "
                                     f"one function per entry; got keys {sorted(call)}")
        return out


DEFAULT_MAX_STEPS = 6
# Why an agent trajectory ended (responses.stop_reason), shared by the runner and the evaluators.
STOP_ANSWER = "answer"               # the model answered in text
STOP_MAX_STEPS = "max_steps"         # still calling tools after max_steps model calls
STOP_UNSCRIPTED = "unscripted_tool"  # a call the script has no result for (name or arguments unforeseen)
STOP_ERROR = "error"                 # a model call failed (its step row has the error)
STOP_REASONS = (STOP_ANSWER, STOP_MAX_STEPS, STOP_UNSCRIPTED, STOP_ERROR)


class ToolRule(BaseModel):
    """One scripted tool result: returned when every `match` argument fits (a string pattern is a
    regular expression the whole argument must match; other values must be equal). No `match`:
    the tool's default."""

    model_config = ConfigDict(extra="forbid")
    match: dict[str, Any] = Field(default_factory=dict)
    result: Any

    @field_validator("match")
    @classmethod
    def _patterns_compile(cls, match: dict[str, Any]) -> dict[str, Any]:
        for arg, pattern in match.items():
            if isinstance(pattern, str):
                try:
                    re.compile(pattern)
                except re.error as e:
                    raise ValueError(f"match.{arg}: {pattern!r} is not a regular expression ({e})") from None
        return match


class PromptRecord(BaseModel):
    """One corpus row. Either `messages` or `prompt` (a single user turn) must be given."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1)
    cohort: str = "default"
    messages: list[Message] = Field(default_factory=list)
    prompt: str | None = None
    context: str | None = None
    tools: list[dict[str, Any]] | None = None
    expected: Expected | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    # Agent rows: the runner plays the tool loop (harness/mirror/trajectory.py) with these results.
    # Tool name (or "*", for tools not named) -> a result for every call, or a list of ToolRules.
    tool_results: dict[str, list[ToolRule]] | None = None
    max_steps: int | None = Field(None, ge=1, le=100)
    source_line: int = 0

    @field_validator("tool_results", mode="before")
    @classmethod
    def _tool_results_shape(cls, v: Any) -> Any:
        if v is None:
            return None
        if not isinstance(v, dict):
            raise ValueError(f"must be a mapping of tool name -> result (or a list of {{match, result}} rules), got {type(v).__name__}")
        out = {}
        for name, spec in v.items():
            if isinstance(spec, list):
                bad = next((i for i, r in enumerate(spec) if not isinstance(r, dict) or "result" not in r), None)
                if bad is not None:
                    raise ValueError(f"{name}[{bad}]: a list holds rules {{\"match\": {{arg: pattern}}, \"result\": ...}}; "
                                     f"a result that is itself a list is written [{{\"result\": [...]}}]")
                out[name] = spec
            else:
                out[name] = [{"result": spec}]
        return out

    @field_validator("id", "cohort", mode="before")
    @classmethod
    def _stringify(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v

    @field_validator("tools")
    @classmethod
    def _tools_shape(cls, tools: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for i, t in enumerate(tools or []):
            fn = t.get("function") if isinstance(t, dict) else None
            if t.get("type") != "function" or not isinstance(fn, dict) or not fn.get("name"):
                raise ValueError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ..., 'parameters': ...}}}}")
        return tools

    @model_validator(mode="after")
    def _has_turns(self) -> "PromptRecord":
        if not self.messages and not self.prompt:
            raise ValueError("needs 'messages' (a list of {role, content}) or 'prompt' (a string)")
        if self.messages and self.prompt:
            raise ValueError("give 'messages' or 'prompt', not both")
        if self.prompt:
            self.messages = [Message(role="user", content=self.prompt)]
            self.prompt = None
        if self.max_steps is not None and self.tool_results is None:
            raise ValueError("max_steps applies to agent rows: give tool_results too (may be {})")
        return self

    @property
    def is_trajectory(self) -> bool:
        """An agent row: the runner answers tool calls with `tool_results` until a final answer."""
        return self.tool_results is not None

    def request_messages(self) -> list[dict[str, Any]]:
        """The chat messages sent to a route: the context, when present, goes into the system turn."""
        return with_context([m.model_dump(exclude_none=True) for m in self.messages], self.context)

    def store_row(self, run_id: str) -> dict[str, Any]:
        return {
            "run_id": run_id,
            "prompt_id": self.id,
            "cohort": self.cohort,
            "messages": [m.model_dump(exclude_none=True) for m in self.messages],
            "context": self.context,
            "tools": self.tools,
            "expected": self.expected.model_dump(exclude_unset=True) if self.expected else None,  # keeps an explicit {"tool": null}
            "metadata": self.metadata,
            "source_line": self.source_line,
            "tool_results": None if self.tool_results is None else
            {k: [r.model_dump(exclude_defaults=True) for r in rules] for k, rules in self.tool_results.items()},
            "max_steps": (self.max_steps or DEFAULT_MAX_STEPS) if self.is_trajectory else None,
        }


@dataclass
class CorpusStats:
    read: int = 0
    skipped: int = 0
    skipped_reasons: list[str] = field(default_factory=list)
    by_cohort: dict[str, int] = field(default_factory=dict)  # valid rows per cohort


# Columns that hold JSON when the corpus is CSV (or Parquet strings).
_JSON_COLUMNS = ("messages", "tools", "expected", "metadata", "tool_results")


# Limits that keep one hostile row from taking the run down: nesting deeper than this (JSON's
# parser, pydantic and the store's JSON all recurse), and one CSV field larger than this (Python's
# csv module stops at 128 KiB by default, less than a long context passage).
MAX_DEPTH = 100
MAX_CSV_FIELD = 64 << 20
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
_SURROGATE = re.compile("[\ud800-\udfff]")


def read_corpus(path: str | Path, skip_invalid: bool = False, stats: CorpusStats | None = None) -> Iterator[PromptRecord]:
    """Yield validated rows one at a time (the file is never loaded whole).

    A bad row raises CorpusError naming file:line, or with skip_invalid is counted in `stats` and skipped.
    Duplicate ids are bad rows too: (prompt, route, sample) must identify a call. A file that is
    not a corpus at all (missing, a directory, compressed, binary, UTF-16, a fake Parquet) is a
    CorpusError before the first row, whatever skip_invalid says.
    """
    path = Path(path)
    stats = stats if stats is not None else CorpusStats()
    check_file(path)
    seen: set[str] = set()
    tabular = FORMATS[path.suffix.lower()] in ("csv", "parquet")  # nested fields arrive as JSON text
    for line_no, raw in _raw_rows(path):
        try:
            if isinstance(raw, Exception):
                raise raw
            if not isinstance(raw, dict):
                raise ValueError(f"expected a JSON object per line, got {type(raw).__name__}")
            row = _decode_json_columns(raw) if tabular else raw
            _check_values(row)
            record = PromptRecord.model_validate({**row, "source_line": line_no})
            if record.id in seen:
                raise ValueError(f"duplicate id {record.id!r}")
            seen.add(record.id)
        except (ValueError, ValidationError, RecursionError) as e:
            message = f"{path}:{line_no}: {_explain(e)}"
            if not skip_invalid:
                raise CorpusError(message) from None
            stats.skipped += 1
            if len(stats.skipped_reasons) < 20:
                stats.skipped_reasons.append(message)
            continue
        stats.read += 1
        stats.by_cohort[record.cohort] = stats.by_cohort.get(record.cohort, 0) + 1
        yield record


def check_corpus(path: str | Path, skip_invalid: bool = False, cohorts: list[str] | None = None) -> CorpusStats:
    """Read and validate the whole corpus once, before a run sends anything: a bad row is one error
    up front, not a run that fails half-way. Raises CorpusError; also when no row is left to send."""
    path = Path(path)
    stats = CorpusStats()
    for _ in read_corpus(path, skip_invalid, stats):
        pass
    if not stats.read:
        raise CorpusError(f"{path}: no valid rows" + (f" ({stats.skipped} invalid rows skipped; first: {stats.skipped_reasons[0]})"
                                                       if stats.skipped else " (the file has none)"))
    missing = sorted(set(cohorts or ()) - set(stats.by_cohort))
    if missing:
        raise CorpusError(f"{path}: no rows in cohort(s) {', '.join(map(repr, missing))} (--cohort); "
                          f"the corpus has: {', '.join(map(key_text, sorted(stats.by_cohort)))}")
    return stats


def check_file(path: Path) -> None:
    """File-level problems, from the name and the first bytes: one clear line instead of a decode error."""
    suffix = path.suffix.lower()
    if path.is_dir():
        raise CorpusError(f"{path}: is a directory; expected a corpus file (.jsonl, .csv or .parquet)")
    if not path.exists():
        raise CorpusError(f"{path}: corpus file not found")
    if suffix in (".gz", ".gzip", ".bz2", ".xz", ".zst", ".zip"):
        raise CorpusError(f"{path}: a compressed file; decompress it first (expected .jsonl, .csv or .parquet)")
    if suffix not in FORMATS:
        raise CorpusError(f"{path}: unknown corpus format {suffix!r}; expected .jsonl, .csv or .parquet")
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            if FORMATS[suffix] == "parquet":
                f.seek(max(0, path.stat().st_size - 4))
                tail = f.read(4)
    except OSError as e:
        raise CorpusError(f"{path}: cannot read the corpus: {e.strerror}") from None
    if head[:2] == b"\x1f\x8b":
        raise CorpusError(f"{path}: gzip-compressed data; decompress it first (gunzip)")
    if FORMATS[suffix] == "parquet":
        if head[:4] != b"PAR1" or tail != b"PAR1":
            raise CorpusError(f"{path}: not a Parquet file (no PAR1 marker at its start and end)")
        return
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise CorpusError(f"{path}: UTF-16 text; save the corpus as UTF-8")
    if b"\x00" in head:
        raise CorpusError(f"{path}: binary data (NUL bytes in the first 4 KiB), or UTF-16 without a byte order mark; "
                          "expected UTF-8 text")


def corpus_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (use null or a string)")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, start=1):
            if line_no == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte order mark
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as e:
                yield line_no, ValueError(f"not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1})")
                continue
            try:
                yield line_no, json.loads(text, parse_constant=_reject_constant)
            except json.JSONDecodeError as e:
                yield line_no, ValueError(f"not valid JSON ({e.msg} at column {e.colno})")
            except RecursionError:
                yield line_no, ValueError(f"nested too deeply (the limit is {MAX_DEPTH} levels)")
            except ValueError as e:  # NaN/Infinity, an integer of over 4300 digits
                yield line_no, ValueError(f"not valid JSON ({e})")


def _csv_rows(path: Path) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(MAX_CSV_FIELD)
    # Undecodable bytes become lone surrogates, reported per row by _check_values (with the row's line).
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.DictReader(f)
        try:
            reader.fieldnames  # noqa: B018 - reads the header, so line numbers below are the rows'
        except csv.Error as e:
            raise CorpusError(f"{path}:1: not valid CSV in the header ({e})") from None
        last_error = -1
        while True:
            start = reader.line_num + 1  # where the next row begins (a quoted field may span lines)
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as e:
                msg = str(e)
                if "field larger than field limit" in msg:
                    msg = f"a field is larger than the {MAX_CSV_FIELD / 2**20:g} MiB limit"
                if reader.line_num == last_error:  # no progress: the reader cannot get past it
                    raise CorpusError(f"{path}:{start}: not valid CSV ({msg})") from None
                last_error = reader.line_num
                yield start, ValueError(f"not valid CSV ({msg})")
                continue
            if None in row:
                yield reader.line_num, ValueError(f"{len(row[None])} more field(s) than the header has")
                continue
            # Line of the row's end, which is its start for single-line rows.
            yield reader.line_num, {k: v for k, v in row.items() if v not in (None, "")}


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    row_no = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                row_no += 1
                yield row_no, {k: v for k, v in row.items() if v is not None}
    except (pa.ArrowException, OSError, ValueError) as e:
        where = f"row {row_no + 1}" if row_no else "its schema"
        raise CorpusError(f"{path}: not a readable Parquet file (at {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _raw_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line or row number, dict or ValueError) per row, by the file's format."""
    kind = FORMATS[path.suffix.lower()]
    yield from {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows}[kind](path)


def _check_values(row: dict[str, Any]) -> None:
    """No value nested deeper than MAX_DEPTH, and no lone surrogate (text the store cannot encode)."""
    stack: list[tuple[Any, str, int]] = [(v, key_text(k), 1) for k, v in row.items()]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"{where.split('.')[0].split('[')[0]}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            m = _SURROGATE.search(value)
            if m:
                raw = ord(m.group()) - 0xDC00 if 0xDC80 <= ord(m.group()) <= 0xDCFF else None
                what = f"not valid UTF-8 (byte 0x{raw:02x})" if raw is not None else f"a lone UTF-16 surrogate (\\u{ord(m.group()):04x})"
                raise ValueError(f"{where}: {what}")
        elif isinstance(value, dict):
            for k, v in value.items():
                if isinstance(k, str) and _SURROGATE.search(k):
                    raise ValueError(f"{where}: a key is not valid text (a lone surrogate)")
                stack.append((v, f"{where}.{key_text(k) if isinstance(k, str) else k}", depth + 1))
        elif isinstance(value, (list, tuple)):
            stack.extend((v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value))


def _decode_json_columns(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for col in _JSON_COLUMNS:
        if isinstance(out.get(col), str):
            try:
                out[col] = json.loads(out[col], parse_constant=_reject_constant)
            except json.JSONDecodeError as e:
                raise ValueError(f"column {col!r} must hold JSON ({e.msg})") from None
            except RecursionError:
                raise ValueError(f"column {col!r}: nested too deeply (the limit is {MAX_DEPTH} levels)") from None
            except ValueError as e:
                raise ValueError(f"column {col!r} must hold JSON ({e})") from None
    return out


def _explain(err: Exception) -> str:
    if isinstance(err, RecursionError):
        return f"nested too deeply (the limit is {MAX_DEPTH} levels)"
    if not isinstance(err, ValidationError):
        return str(err)
    parts = []
    for e in err.errors():
        loc = ".".join(key_text(p) if isinstance(p, str) else str(p) for p in e["loc"]) or "row"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (expected id, cohort, messages|prompt, context, tools, expected, metadata, tool_results, max_steps)"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and e["type"].endswith("_type"):
            msg += f", got {type(e['input']).__name__}"
        parts.append(f"{loc}: {msg}" if loc != "row" else msg)
    return "; ".join(parts)
