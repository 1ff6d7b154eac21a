"""Known secrets (the API keys in use) replaced in everything stored: a server may echo a key back.

Keys shorter than MIN_LENGTH are not redacted: replacing a 3-letter "key" would garble text,
and such a value is no secret. The JSON-escaped form is replaced too (a key inside a JSON column).
"""

from __future__ import annotations

import json
from typing import Iterable

MIN_LENGTH = 8


class Redactor:
    """`text(s)` returns s with every known secret replaced by `[redacted NAME]`."""

    def __init__(self, secrets: Iterable[tuple[str, str]] = ()):
        pairs: dict[str, str] = {}
        for name, value in secrets:
            if value and len(value) >= MIN_LENGTH:
                label = f"[redacted {name}]"
                pairs[value] = label
                escaped = json.dumps(value)[1:-1]
                if escaped != value:
                    pairs[escaped] = label
        # longest first, so a key that contains another is replaced whole
        self._pairs = sorted(pairs.items(), key=lambda kv: -len(kv[0]))

    def __bool__(self) -> bool:
        return bool(self._pairs)

    def text(self, value: str) -> str:
        for secret, label in self._pairs:
            if secret in value:
                value = value.replace(secret, label)
        return value
