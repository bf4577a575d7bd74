"""Go's way of printing values, and the functions templates may call: Go's
built-ins (``and``, ``or``, ``not``, ``eq``…, ``len``, ``index``, ``print``,
``printf``, ``println``) and docker's (``json``, ``upper``, ``lower``,
``title``, ``join``, ``split``, ``truncate``, ``pad``)."""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from ..errors import UsageError


class _NoValue:
    """What a missing map key evaluates to; prints as Go prints it."""

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE = _NoValue()
_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


def go_str(value) -> str:
    """``fmt.Sprint`` of a JSON-shaped value: ``[a b]``, ``map[k:v]``, ``true``."""
    if value is None or value is NO_VALUE:
        return "<no value>"
    return _sprint(value)


def _sprint(value) -> str:
    if value is None or value is NO_VALUE:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_sprint(value[k])}" for k in sorted(value)) + "]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_sprint(v) for v in value) + "]"
    return str(value)


def type_name(value) -> str:
    if value is None or value is NO_VALUE:
        return "nil"
    return {bool: "bool", int: "int", float: "float64", str: "string",
            dict: "map", list: "slice", tuple: "slice"}.get(type(value), type(value).__name__)


def truth(value) -> bool:
    if value is None or value is NO_VALUE:
        return False
    return bool(value)


def go_json(value) -> str:
    """``json.Marshal``: compact, keys sorted, HTML characters escaped."""
    text = json.dumps(None if value is NO_VALUE else value, separators=(",", ":"),
                      sort_keys=True, ensure_ascii=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def sprintf(fmt: str, *args) -> str:
    """``fmt.Sprintf`` for the verbs templates use: v s q d t x X o b e f g."""
    queue = list(args)

    def one(m: re.Match) -> str:
        flags, width, prec, verb = m.groups()
        if verb == "%":
            return "%"
        if not queue:
            return f"%!{verb}(MISSING)"
        value = queue.pop(0)
        try:
            return _format(value, flags, width, prec, verb)
        except (TypeError, ValueError):
            return f"%!{verb}({type_name(value)}={_sprint(value)})"
    out = _VERB.sub(one, fmt)
    if queue:
        out += "%!(EXTRA " + ", ".join(f"{type_name(v)}={_sprint(v)}" for v in queue) + ")"
    return out


def _format(value, flags: str, width: str | None, prec: str | None, verb: str) -> str:
    if verb in "vs":
        value, kind = _sprint(value), "s"
    elif verb == "q":
        value, kind = json.dumps(value if isinstance(value, str) else _sprint(value), ensure_ascii=False), "s"
    elif verb == "t":
        if not isinstance(value, bool):
            raise TypeError
        value, kind = _sprint(value), "s"
    elif verb in "dxXob":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError
        kind = verb
    elif verb in "eEfFgG":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        value, kind = float(value), verb
    else:
        raise ValueError(verb)
    return format(value, _spec(flags, width, prec, kind))


def _spec(flags: str, width: str | None, prec: str | None, kind: str) -> str:
    """Go's flags as a Python format spec (Go pads on the left unless ``-``)."""
    left = "-" in flags
    zero = "0" in flags and not left and kind != "s"
    align = "<" if left else "=" if zero else ">"
    sign = "" if kind == "s" else "+" if "+" in flags else " " if " " in flags else ""
    alt = "#" if "#" in flags and kind in "xXob" else ""
    return f"{'0' if zero else ''}{align}{sign}{alt}{width or ''}{'.' + prec if prec else ''}{kind}"


def _join(a, b) -> str:
    elems, sep = (a, b) if isinstance(a, (list, tuple)) else (b, a)
    return str(sep).join(_sprint(e) for e in elems)


def _truncate(a, b) -> str:
    text, n = (a, b) if isinstance(a, str) else (b, a)
    return text[:int(n)]


def _eq(first, *others) -> bool:
    if not others:
        raise TypeError("missing argument for comparison")
    return any(first == other for other in others)


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def compare(a, b) -> bool:
        try:
            return op(a, b)
        except TypeError:
            raise UsageError(f"template: incompatible types for comparison: "
                             f"{type_name(a)} and {type_name(b)}") from None
    return compare


def _and(*args):
    if not args:
        raise TypeError("missing argument")
    for a in args:
        if not truth(a):
            return a
    return args[-1]


def _or(*args):
    if not args:
        raise TypeError("missing argument")
    for a in args:
        if truth(a):
            return a
    return args[-1]


def _index(value, *keys):
    for key in keys:
        try:
            value = value[key]
        except KeyError:
            value = NO_VALUE
        except (IndexError, TypeError):
            raise UsageError(f"template: index of {type_name(value)} with {_sprint(key)}") from None
    return value


def _print(*args) -> str:
    out = ""
    for i, a in enumerate(args):
        if i and not isinstance(a, str) and not isinstance(args[i - 1], str):
            out += " "
        out += _sprint(a)
    return out


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "and": _and, "or": _or, "not": lambda x: not truth(x),
    "eq": _eq, "ne": lambda a, b: a != b,
    "lt": _compare(lambda a, b: a < b), "le": _compare(lambda a, b: a <= b),
    "gt": _compare(lambda a, b: a > b), "ge": _compare(lambda a, b: a >= b),
    "len": len, "index": _index,
    "print": _print, "println": lambda *a: " ".join(_sprint(x) for x in a) + "\n",
    "printf": sprintf, "json": go_json,
    "upper": lambda s: _sprint(s).upper(), "lower": lambda s: _sprint(s).lower(),
    "title": lambda s: re.sub(r"\b[a-z]", lambda m: m.group(0).upper(), _sprint(s)),
    "join": _join, "split": lambda s, sep: _sprint(s).split(sep), "truncate": _truncate,
    "pad": lambda s, before, after: " " * int(before) + _sprint(s) + " " * int(after),
}

HELP = {
    "and": "first empty argument, else the last", "or": "first non-empty argument, else the last",
    "not": "true if the argument is empty", "eq": "`eq A B C…`: A equals any of B, C…",
    "ne": "not equal", "lt": "less than", "le": "less or equal", "gt": "greater than",
    "ge": "greater or equal", "len": "length of a string, list or map",
    "index": "`index X K…`: X[K]… (list position or map key)",
    "print": "the arguments, as Go's fmt.Sprint", "println": "the arguments, spaced, and a newline",
    "printf": "Go's fmt.Sprintf (verbs v s q d t x X o b e f g, flags, width, precision)",
    "json": "the value as compact JSON", "upper": "upper case", "lower": "lower case",
    "title": "first letter of each word in upper case",
    "join": "`join LIST SEP` (or `LIST | join SEP`): elements joined by SEP",
    "split": "`split S SEP`: a list", "truncate": "`truncate S N` (or `S | truncate N`): first N characters",
    "pad": "`pad S L R`: S with L spaces before and R after",
}


def call(name: str, args: list):
    try:
        return FUNCTIONS[name](*args)
    except UsageError:
        raise
    except (TypeError, ValueError) as e:
        raise UsageError(f"template: {name}: wrong arguments "
                         f"({', '.join(type_name(a) for a in args) or 'none'}): {e}") from None
