"""Untrusted strings are data: the one escaping module every output uses.

Run ids, prompt ids, route and cohort names, policy keys, error messages and model output come
from corpora, config files and servers. Each renderer passes them through the function for its
format, never through its own ad-hoc escaping:

    visible(s)    control characters (C0 but tab/LF, DEL, C1, bidi overrides, lone surrogates,
                  U+FFFE/U+FFFF) become visible escapes such as \\x1b; every other function
                  starts with it, so no ANSI escape, CR overwrite or XML-illegal byte survives
    term(s)       a rich Text (never parsed as markup: a `[/]` cannot crash a command)
    markdown(s)   the ASCII punctuation Markdown reads backslash-escaped (CommonMark allows that for
                  any of them), so no link, image, autolink, emphasis, HTML tag, table pipe, code
                  span, math or list marker comes from the data
    html(s)       html.escape with quotes
    xml(s)        text XML 1.0 can hold (the XML writer escapes <, & and quotes)
    mpl(s)        literal text for matplotlib (a `$` would start mathtext)
    filename(s)   a safe single path component (for reports/RUN/)
"""

from __future__ import annotations

import html as _html
import re
import string

from rich.text import Text

# C0 controls except tab and LF, DEL, C1 controls (0x9b is a one-byte CSI), the bidi embedding,
# override and isolate controls ("Trojan source"), lone surrogates and the XML non-characters.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff\ufffe\uffff]")
_LINE = re.compile("[\t\n]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
_PUNCT = frozenset(string.punctuation)


def _show(m: re.Match) -> str:
    ch = m.group(0)
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(value: object, multiline: bool = False) -> str:
    """`value` as text with every control character shown as an escape (`\\x1b`, `\\r`, `\\u202e`).

    Names are one line: tab and LF are escaped too unless `multiline` (messages, model output)."""
    s = "" if value is None else str(value)
    s = _CONTROL.sub(_show, s)
    return s if multiline else _LINE.sub(_show, s)


def term(value: object, style: str | None = None, multiline: bool = False) -> Text:
    """A rich Text of `value` for the terminal: no markup, no control characters."""
    return Text(visible(value, multiline), style=style or "")


# ASCII punctuation that means nothing inline once `[`, `]`, `<` and `&` are escaped; kept as it is
# so the Markdown source stays readable. `-`, `+`, `=`, `.` and `)` are escaped where a block
# could start (the first character, or digits then `.`/`)`); `.` after "www" and `:` before "/"
# too, which would start a GFM autolink.
_MD_INERT = frozenset(",/'\";?%^{}()=-.+:")
_MD_BLOCK_START = re.compile(r"^(\s*)([-+=]|\d+[.)])")
_MD_AUTOLINK = re.compile(r"(?i)(?<=www)\.|:(?=/)")  # www. and scheme:// (the @ of an email is escaped)


def markdown(value: object) -> str:
    """Inline Markdown text that renders as exactly `value` (one line; safe in a table cell, a
    heading or a list item): no link, image, autolink, emphasis, HTML, table pipe, code span,
    math or block marker can come from the data."""
    s = "".join("\\" + ch if ch in _PUNCT and ch not in _MD_INERT else ch for ch in visible(value))
    s = _MD_AUTOLINK.sub(lambda m: "\\" + m.group(0), s)
    return _MD_BLOCK_START.sub(lambda m: m.group(1) + m.group(2)[:-1] + "\\" + m.group(2)[-1], s, count=1)


def html(value: object, multiline: bool = False) -> str:
    return _html.escape(visible(value, multiline), quote=True)


def xml(value: object) -> str:
    """Text for an XML 1.0 element or attribute (ElementTree escapes the markup characters)."""
    return visible(value, multiline=True)


def mpl(value: object) -> str:
    """Literal text for a matplotlib label."""
    return visible(value).replace("$", r"\$")


_UNSAFE_PATH = re.compile(r"[^A-Za-z0-9._-]")


def filename(value: object) -> str:
    """One path component made of [A-Za-z0-9._-] (never '', '.' or '..'), for names from data."""
    s = _UNSAFE_PATH.sub("_", str(value))[:120]
    return s if s.strip(".") else "_" + s
