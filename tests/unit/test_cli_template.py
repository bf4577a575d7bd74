"""``--format`` templates: the Go text/template subset docker users write."""

from __future__ import annotations

import json

import pytest

from lazyfs.cli.render import render
from lazyfs.cli.template import Template
from lazyfs.errors import UsageError

DOC = {"Name": "reg/app:v1", "Size": 1234, "Empty": [], "Nil": None, "Yes": True,
       "Config": {"Env": ["A=1", "B=<2>"], "Labels": {"k": "v", "a": "b"}, "User": ""},
       "Layers": [{"Digest": "sha256:aa", "Size": 10}, {"Digest": "sha256:bb", "Size": 20}]}


@pytest.mark.parametrize("template,out", [
    ("{{.Name}}", "reg/app:v1"),
    ("{{.Config.Env}}", "[A=1 B=<2>]"),
    ("{{.Config.Labels}}", "map[a:b k:v]"),
    ("{{.Nope}} {{.Nil}} {{.Config.Nope}}", "<no value> <no value> <no value>"),
    ("{{json .Config.Labels}}", '{"a":"b","k":"v"}'),
    ("{{json .Config.Env}}", '["A=1","B=\\u003c2\\u003e"]'),
    ("{{if .Config.User}}user{{else}}root{{end}}", "root"),
    ("{{if .Empty}}1{{else if eq .Size 1234}}2{{else}}3{{end}}", "2"),
    ("{{if and .Yes (not .Empty)}}ok{{end}}", "ok"),
    ("{{if or .Empty .Nil}}x{{else}}neither{{end}}", "neither"),
    ("{{if ne .Name \"x\"}}differs{{end}}", "differs"),
    ("{{if eq .Size 1 2 1234}}one of{{end}}", "one of"),
    ("{{range .Layers}}{{.Digest}} {{end}}", "sha256:aa sha256:bb "),
    ("{{range $i, $l := .Layers}}{{$i}}:{{$l.Size}},{{end}}", "0:10,1:20,"),
    ("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}", "a=b;k=v;"),
    ("{{range .Empty}}x{{else}}none{{end}}", "none"),
    ("{{with .Config}}{{.Env}}{{end}}", "[A=1 B=<2>]"),
    ("{{range .Layers}}{{$.Name}} {{end}}", "reg/app:v1 reg/app:v1 "),
    ("{{.Name | printf \"%s!\"}}", "reg/app:v1!"),
    ("{{printf \"%-6s|%5d|%q|%x|%.1f\" \"ab\" .Size \"q\" 255 2.25}}", 'ab    | 1234|"q"|ff|2.2'),
    ("{{.Name | upper}} {{lower \"AB\"}} {{title \"a b\"}}", "REG/APP:V1 ab A B"),
    ("{{join .Config.Env \",\"}} {{.Config.Env | join \";\"}}", "A=1,B=<2> A=1;B=<2>"),
    ("{{truncate .Name 3}} {{.Name | truncate 3}}", "reg reg"),
    ("{{len .Layers}} {{index .Layers 1 | json}}", '2 {"Digest":"sha256:bb","Size":20}'),
    ("{{(index .Layers 0).Digest}}", "sha256:aa"),
    ("a {{- \" b \" -}}  c", "a b c"),
    ("{{/* a comment */}}x{{`raw`}}{{1.5}}{{true}}", "xraw1.5true"),
    ("{{$n := 0}}{{range .Layers}}{{$n = .Size}}{{end}}{{$n}}", "20"),
    ('{{"a\\tb\\x41"}}', "a\tbA"),
])
def test_template_evaluates_what_docker_users_write(template, out):
    assert Template(template).execute(DOC) == out


@pytest.mark.parametrize("template,names", [
    ("{{.Name | nosuch}}", "'nosuch' is not supported"),
    ("{{template \"x\"}}", "{{template}} is not supported"),
    ("{{define \"x\"}}{{end}}", "{{define}} is not supported"),
    ("{{if .Name}}x", "without {{end}}"),
    ("{{end}}", "unexpected {{end}}"),
    ("{{.Name", "unclosed"),
    ("{{.Name \"x\"}}", "non-function .Name"),
    ("{{.Name.Inner}}", "can't evaluate field Inner"),
    ("{{lt .Name 3}}", "incompatible types"),
    ('{{"\\q"}}', "unknown escape sequence"),
    ("{{$nope = 1}}", "undefined variable $nope"),
])
def test_what_is_not_supported_is_one_line_naming_it(template, names):
    with pytest.raises(UsageError) as e:
        Template(template).execute(DOC)
    assert str(e.value).startswith("template: ") and names in str(e.value)
    assert "\n" not in str(e.value)


ROWS = [{"Repository": "ubuntu", "Tag": "latest", "ID": "0123456789ab", "Digest": "sha256:x",
         "CreatedSince": "2 years ago", "CreatedAt": "N/A", "Size": "74.8MB"}]


def test_images_format_json_is_one_object_per_line_as_docker_23():
    lines = render("json", ROWS * 2).splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["Repository"] == "ubuntu"


def test_images_format_conditionals_pipes_and_table_headers():
    assert render("{{if eq .Tag \"latest\"}}{{.Repository | upper}}{{end}}", ROWS) == "UBUNTU\n"
    assert render("{{.Repository | printf \"%s\"}}", ROWS) == "ubuntu\n"
    table = render(r"table {{.Repository}}\t{{.Tag | upper}}", ROWS).splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG"] and table[1].split() == ["ubuntu", "LATEST"]
    with pytest.raises(UsageError, match=r"unknown field \.Bogus"):
        render("table {{.Bogus}}", [])
