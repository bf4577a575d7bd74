"""The part of Go's text/template that docker users write in ``--format``.

Supported: ``.Field`` and ``.A.B``, ``$`` and ``$var`` (with ``:=``),
``if``/``else if``/``else``/``end``, ``range`` (with ``$i, $v :=``) and
``with``, pipes ``|``, parentheses, string/number/bool literals, ``{{-``/``-}}``
trimming, comments, and the functions in ``FUNCTIONS``. Anything else is a
``UsageError`` naming it, raised when the template is parsed, so a typo
costs no work. Values are JSON-shaped (dicts, lists, str, int, float, bool,
None) and print as Go prints them.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import UsageError
from . import templatefuncs

NO_VALUE = templatefuncs.NO_VALUE
_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<num>[-+]?(?:0[xX][0-9a-fA-F]+|\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?))
  | (?P<var>\$[A-Za-z_0-9]*)(?P<varfields>(?:\.[A-Za-z_][A-Za-z_0-9]*)*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z_0-9]*)+|\.)
  | (?P<decl>:=|=)
  | (?P<punct>[()|,])
  | (?P<ident>[A-Za-z_][A-Za-z_0-9]*)
""", re.X)
SYNTAX = [
    ("`{{.Field}}`, `{{.A.B}}`", "a field of the value (a missing one prints `<no value>`)"),
    ("`{{.}}`, `{{$}}`", "the current value; the whole document"),
    ("`{{$v := PIPE}}`, `{{$v}}`, `{{$v.Field}}`", "variables"),
    ("`{{if PIPE}}…{{else if PIPE}}…{{else}}…{{end}}`", "conditionals (empty values are false)"),
    ("`{{range PIPE}}…{{else}}…{{end}}`", "over a list, or a map's values in key order; "
                                          "`range $i, $v := PIPE` names them"),
    ("`{{with PIPE}}…{{else}}…{{end}}`", "`.` set to the value, if not empty"),
    ("`{{A | f B}}`", "pipes: the left side is f's last argument"),
    ("`{{(PIPE).Field}}`", "parentheses"),
    ('`"text"`, `` `raw` ``, `12`, `1.5`, `true`, `nil`', "literals (Go escapes in strings)"),
    ("`{{- …}}`, `{{… -}}`, `{{/* … */}}`", "trimming spaces, comments"),
    ("`\\t`, `\\n`", "tab and newline, anywhere in the format"),
]
_BAD_ESCAPE = re.compile(r'\\(?![abfnrtv\\"]|x[0-9a-fA-F]{2}|[0-7]{3}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})')
_UNSUPPORTED = {"define", "template", "block", "break", "continue"}


def fail(what: str) -> UsageError:
    return UsageError(f"template: {what}")


# -- syntax -------------------------------------------------------------------

@dataclass
class Operand:
    kind: str  # "field", "var", "lit", "ident", "pipe"
    value: Any
    chain: tuple[str, ...] = ()


@dataclass
class Pipe:
    commands: list[list[Operand]]
    decl: list[str] = field(default_factory=list)
    assign: bool = False
    """``$x = …`` sets an existing variable; ``$x := …`` declares one."""


@dataclass
class Block:
    """``if``, ``range`` or ``with``: its pipe, its body and its ``else``."""

    kind: str
    pipe: Pipe
    body: list
    orelse: list = field(default_factory=list)


def _lex(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise fail(f"unexpected {text[pos:pos + 10]!r} in {{{{{text}}}}}")
        pos = m.end()
        kind = m.lastgroup if m.lastgroup != "varfields" else "var"
        if kind != "space":
            out.append((kind, m.group(kind) if kind != "var" else m.group(0)))
    return out


class _PipeParser:
    """One action's tokens into a ``Pipe``."""

    def __init__(self, text: str):
        self.text, self.toks, self.i = text, _lex(text), 0

    def parse(self) -> Pipe:
        pipe = self.pipe()
        if self.i < len(self.toks):
            raise fail(f"unexpected {self.toks[self.i][1]!r} in {{{{{self.text}}}}}")
        return pipe

    def pipe(self) -> Pipe:
        decl = self._declaration()
        assign = bool(decl) and self.toks[self.i - 1][1] == "="
        commands = [self.command()]
        while self._peek() == ("punct", "|"):
            self.i += 1
            commands.append(self.command())
        return Pipe(commands, decl, assign)

    def _declaration(self) -> list[str]:
        names, j = [], self.i
        while j < len(self.toks) and self.toks[j][0] == "var" and "." not in self.toks[j][1]:
            names.append(self.toks[j][1])
            j += 1
            if j < len(self.toks) and self.toks[j] == ("punct", ","):
                j += 1
                continue
            break
        if names and j < len(self.toks) and self.toks[j][0] == "decl":
            self.i = j + 1
            return names
        return []

    def command(self) -> list[Operand]:
        ops = []
        while self.i < len(self.toks) and self._peek() not in (("punct", "|"), ("punct", ")")):
            ops.append(self.operand())
        if not ops:
            raise fail(f"missing value in {{{{{self.text}}}}}")
        return ops

    def operand(self) -> Operand:
        kind, text = self.toks[self.i]
        self.i += 1
        if kind == "punct" and text == "(":
            inner = self.pipe()
            if self._peek() != ("punct", ")"):
                raise fail(f"unclosed '(' in {{{{{self.text}}}}}")
            self.i += 1
            chain = ()
            if self._peek() and self._peek()[0] == "field" and self._peek()[1] != ".":
                chain = tuple(p for p in self.toks[self.i][1].split(".") if p)
                self.i += 1
            return Operand("pipe", inner, chain)
        if kind == "field":
            return Operand("field", None, tuple(p for p in text.split(".") if p))
        if kind == "var":
            name, *chain = text.split(".")
            return Operand("var", name, tuple(chain))
        if kind == "str":
            if _BAD_ESCAPE.search(text):
                raise fail(f"unknown escape sequence in {text}")
            return Operand("lit", ast.literal_eval(text))
        if kind == "raw":
            return Operand("lit", text[1:-1])
        if kind == "num":
            return Operand("lit", _number(text))
        if kind == "ident":
            return _ident(text)
        raise fail(f"unexpected {text!r} in {{{{{self.text}}}}}")

    def _peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else None


def _number(text: str):
    try:
        return int(text, 0)
    except ValueError:
        return float(text)


def _ident(name: str) -> Operand:
    if name in ("true", "false"):
        return Operand("lit", name == "true")
    if name == "nil":
        return Operand("lit", None)
    if name not in templatefuncs.FUNCTIONS:
        raise fail(f"function {name!r} is not supported "
                   f"(supported: {', '.join(sorted(templatefuncs.FUNCTIONS))})")
    return Operand("ident", name)


def _pieces(template: str) -> list[tuple[str, str]]:
    """("text", …) and ("action", …) in order, with ``{{-``/``-}}`` trimming done."""
    out: list[tuple[str, str]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        text = text.lstrip() if trim_next else text
        out.append(("text", text.rstrip() if m.group(1) else text))
        body = m.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            out.append(("action", body))
        pos, trim_next = m.end(), bool(m.group(3))
    tail = template[pos:]
    if "{{" in tail:
        raise fail("unclosed action '{{'")
    out.append(("text", tail.lstrip() if trim_next else tail))
    return [p for p in out if p != ("text", "")]


class _Parser:
    """The sequence of text and actions into nested ``Block``s."""

    def __init__(self, template: str):
        self.pieces, self.i = _pieces(template), 0

    def parse(self) -> list:
        body, stop = self.nodes()
        if stop is not None:
            raise fail(f"unexpected {{{{{stop}}}}}")
        return body

    def nodes(self) -> tuple[list, str | None]:
        """Nodes up to an ``else``/``end`` (returned) or the end of the template."""
        out: list = []
        while self.i < len(self.pieces):
            kind, text = self.pieces[self.i]
            self.i += 1
            word = text.split(None, 1)[0] if kind == "action" and text else ""
            if kind == "text":
                out.append(text)
            elif word in ("else", "end"):
                return out, text
            elif word in ("if", "range", "with"):
                out.append(self.block(word, text[len(word):]))
            elif word in _UNSUPPORTED:
                raise fail(f"{{{{{word}}}}} is not supported")
            else:
                out.append(_PipeParser(text).parse())
        return out, None

    def block(self, kind: str, rest: str) -> Block:
        if not rest.strip():
            raise fail(f"missing value for {kind}")
        node = Block(kind, _PipeParser(rest).parse(), [])
        node.body, stop = self.nodes()
        words = (stop or "").split(None, 2)
        if words[:1] == ["else"] and len(words) > 1 and words[1] in ("if", "with"):
            # {{else if …}} opens a block that ends at this block's {{end}}
            node.orelse = [self.block(words[1], words[2] if len(words) > 2 else "")]
            return node
        if stop == "else":
            node.orelse, stop = self.nodes()
        if stop != "end":
            raise fail(f"{{{{{kind}}}}} without {{{{end}}}}" if stop is None
                       else f"unexpected {{{{{stop}}}}}")
        return node


# -- evaluation -----------------------------------------------------------------

class _Exec:
    def __init__(self, root, missing_field: Callable[[str], Any]):
        self.root, self.missing_field = root, missing_field
        self.vars: list[dict[str, Any]] = [{"$": root}]
        self.out: list[str] = []

    def run(self, nodes: list, dot) -> None:
        for node in nodes:
            if isinstance(node, str):
                self.out.append(node)
            elif isinstance(node, Pipe):
                value = self.pipe(node, dot)
                if not node.decl:
                    self.out.append(templatefuncs.go_str(value))
            else:
                self.block(node, dot)

    def block(self, node: Block, dot) -> None:
        self.vars.append({})
        try:
            if node.kind == "range":
                self.range(node, dot)
                return
            value = self.pipe(node.pipe, dot)
            if templatefuncs.truth(value):
                self.run(node.body, value if node.kind == "with" else dot)
            else:
                self.run(node.orelse, dot)
        finally:
            self.vars.pop()

    def range(self, node: Block, dot) -> None:
        decl = node.pipe.decl
        items = _items(self.pipe(node.pipe, dot, declare=False))
        if not items:
            self.run(node.orelse, dot)
        for key, item in items:
            if len(decl) == 2:
                self.vars[-1].update({decl[0]: key, decl[1]: item})
            elif decl:
                self.vars[-1][decl[0]] = item
            self.run(node.body, item)

    def pipe(self, pipe: Pipe, dot, declare: bool = True):
        value, piped = None, False
        for command in pipe.commands:
            value = self.command(command, dot, [value] if piped else [])
            piped = True
        for name in pipe.decl if declare else ():
            scope = self.vars[-1]
            if pipe.assign:
                self.var(name)  # must exist
                scope = next(s for s in reversed(self.vars) if name in s)
            scope[name] = value
        return value

    def command(self, ops: list[Operand], dot, piped: list):
        head = ops[0]
        if head.kind == "ident":
            args = [self.operand(op, dot) for op in ops[1:]] + piped
            return templatefuncs.call(head.value, args)
        if len(ops) > 1 or piped:
            raise fail(f"can't give an argument to a non-function {_show(head)}")
        return self.operand(head, dot)

    def operand(self, op: Operand, dot):
        if op.kind == "lit":
            return op.value
        if op.kind == "pipe":
            return self.fields(self.pipe(op.value, dot), op.chain)
        if op.kind == "ident":
            return templatefuncs.call(op.value, [])
        base = dot if op.kind == "field" else self.var(op.value)
        return self.fields(base, op.chain)

    def var(self, name: str):
        for scope in reversed(self.vars):
            if name in scope:
                return scope[name]
        raise fail(f"undefined variable {name}")

    def fields(self, value, chain: tuple[str, ...]):
        for i, name in enumerate(chain):
            if isinstance(value, dict):
                value = value[name] if name in value else self.missing_field("." + ".".join(chain[:i + 1]))
            elif value is None or value is NO_VALUE:
                return NO_VALUE
            else:
                raise fail(f"can't evaluate field {name} in {templatefuncs.type_name(value)}")
        return value


def _items(value) -> list[tuple[Any, Any]]:
    if value is None or value is NO_VALUE:
        return []
    if isinstance(value, dict):
        return [(k, value[k]) for k in sorted(value)]
    if isinstance(value, (list, tuple)):
        return list(enumerate(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return list(enumerate(range(value)))
    raise fail(f"range can't iterate over {templatefuncs.go_str(value)}")


def _show(op: Operand) -> str:
    if op.kind == "field":
        return "." + ".".join(op.chain)
    if op.kind == "var":
        return ".".join((op.value, *op.chain))
    return templatefuncs.go_str(op.value) if op.kind == "lit" else "(...)"


def _no_value(_path: str):
    return NO_VALUE


def unknown_field(known) -> Callable[[str], Any]:
    """For data with a fixed set of fields (docker's structs): a field not
    among them is an error naming the ones there are."""
    def missing(path: str):
        raise fail(f"unknown field {path} (known: {', '.join('.' + f for f in known)})")
    return missing


class Template:
    """A parsed template; ``execute`` renders it over one value."""

    def __init__(self, text: str, missing_field: Callable[[str], Any] = _no_value):
        self.text = text
        self._nodes = _Parser(text).parse()
        self._missing = missing_field

    def execute(self, data) -> str:
        run = _Exec(data, self._missing)
        run.run(self._nodes, data)
        return "".join(run.out)
