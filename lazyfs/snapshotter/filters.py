"""containerd's filter syntax, for the List (Walk) call.

containerd's metadata store asks a proxy snapshotter to walk its snapshots
when a remote snapshotter answers Prepare with AlreadyExists, with
``labels."containerd.io/snapshot.ref"==CHAINID,parent=="PARENT"``, and
trusts the answer (it re-checks, but then fails if nothing matched); ``ctr
snapshots ls`` and other clients may send any filter. The grammar is
containerd's (``filters/parser.go``)::

    filters   := one or more, matching when any one matches
    selectors := selector ("," selector)*          all must match
    selector  := fieldpath [("==" | "!=" | "~=") value]   no operator: present
    fieldpath := field ("." field)*
    field     := quoted | [A-Za-z][A-Za-z0-9_]*
    value     := quoted | [^\\s,]+                 (~= also takes /re/ or |re|)

Snapshots expose ``kind`` (active, view, committed), ``name``, ``parent`` and
``labels.KEY``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import UsageError

Fields = Callable[[list[str]], "str | None"]
"""A snapshot's value at a field path, or None when it has none."""

_FIELD = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_OPERATOR = re.compile(r"==|!=|~=")
_BARE_VALUE = re.compile(r"[^\s,]+")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0"}


@dataclass(frozen=True)
class Selector:
    path: tuple[str, ...]
    op: str
    """'' (present), '==', '!=' or '~='."""
    value: str = ""

    def matches(self, fields: Fields) -> bool:
        got = fields(list(self.path))
        if self.op == "":
            return got is not None
        if self.op == "==":
            return got is not None and got == self.value
        if self.op == "!=":
            return (got or "") != self.value
        return re.search(self.value, got or "") is not None


Filter = tuple[Selector, ...]


def parse_filters(texts: Sequence[str]) -> list[Filter]:
    """Every filter of a List request; an empty list matches everything."""
    return [parse_filter(t) for t in texts if t != ""]


def matches(filters: list[Filter], fields: Fields) -> bool:
    return not filters or any(all(s.matches(fields) for s in f) for f in filters)


def parse_filter(text: str) -> Filter:
    p = _Parser(text)
    selectors = [p.selector()]
    while p.skip_space() < len(text):
        p.expect(",")
        selectors.append(p.selector())
    return tuple(selectors)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def fail(self, what: str):
        raise UsageError(f"filter {self.text!r}: {what} at position {self.pos}")

    def skip_space(self) -> int:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        return self.pos

    def expect(self, ch: str) -> None:
        if not self.text.startswith(ch, self.skip_space()):
            self.fail(f"expected {ch!r}")
        self.pos += len(ch)

    def selector(self) -> Selector:
        path = [self.field()]
        while self.text.startswith(".", self.skip_space()):
            self.pos += 1
            path.append(self.field())
        self.skip_space()
        if self.pos >= len(self.text) or self.text[self.pos] == ",":
            return Selector(tuple(path), "")
        m = _OPERATOR.match(self.text, self.pos)
        if not m:
            self.fail('expected an operator ("==", "!=" or "~=")')
        self.pos = m.end()
        return Selector(tuple(path), m.group(), self.value(regex=m.group() == "~="))

    def field(self) -> str:
        return self.word(_FIELD, "\"'", "a field name or a quoted string")

    def value(self, regex: bool) -> str:
        return self.word(_BARE_VALUE, "\"'/|" if regex else "\"'", "a value")

    def word(self, bare: re.Pattern, quotes: str, what: str) -> str:
        self.skip_space()
        if self.pos < len(self.text) and self.text[self.pos] in quotes:
            return self.quoted()
        m = bare.match(self.text, self.pos)
        if not m:
            self.fail(f"expected {what}")
        self.pos = m.end()
        return m.group()

    def quoted(self) -> str:
        quote = self.text[self.pos]
        end = self.pos + 1
        while end < len(self.text) and self.text[end] != quote:
            end += 2 if self.text[end] == "\\" else 1
        if end >= len(self.text):
            self.fail("unterminated quoted string")
        raw = self.text[self.pos + 1:end]
        self.pos = end + 1
        if quote in "/|":
            return raw.replace("\\" + quote, quote)
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), raw)
