"""Docker's way of showing images: columns, human sizes and times, and
``--format`` templates over them. Pure functions, so the CLI stays thin."""

from __future__ import annotations

import datetime as _dt
import re
import time

from .template import Template, unknown_field

FIELDS = {"Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST", "ID": "IMAGE ID",
           "CreatedSince": "CREATED", "CreatedAt": "CREATED AT", "Size": "SIZE"}


def familiar_repo(repository: str) -> str:
    """``docker.io/library/ubuntu`` is shown as ``ubuntu``, as docker does."""
    if repository.startswith("docker.io/"):
        short = repository.removeprefix("docker.io/")
        rest = short.removeprefix("library/")
        return rest if "/" not in rest else short
    return repository


def image_fields(rec, no_trunc: bool = False, now: float | None = None) -> dict[str, str]:
    hexid = rec.config_digest.split(":", 1)[-1]
    created = _parse_time(rec.created)
    return {
        "Repository": familiar_repo(rec.repository),
        "Tag": rec.tag or "<none>",
        "Digest": rec.digest or "<none>",
        "ID": rec.config_digest if no_trunc else hexid[:12],
        "CreatedSince": human_since(created, now) if created else "N/A",
        "CreatedAt": created.strftime("%Y-%m-%d %H:%M:%S +0000 UTC") if created else "N/A",
        "Size": human_size(rec.size if rec.unpacked_size is None else rec.unpacked_size),
    }


def render(template: str, rows: list[dict], headers: dict[str, str] | None = None) -> str:
    """Docker's ``--format``: a Go template run per row, one line each;
    ``json`` is ``{{json .}}``, and a ``table`` prefix adds a header (the
    template run over ``headers``) and aligns the columns."""
    headers = FIELDS if headers is None else headers
    template = template.replace("\\t", "\t").replace("\\n", "\n")
    if template.strip() == "json":
        template = "{{json .}}"
    table = template.startswith("table")
    if table:
        template = template[len("table"):].lstrip(" ")
    parsed = Template(template, unknown_field(headers))
    lines = [parsed.execute(row) for row in rows]
    if not table:
        return "".join(line + "\n" for line in lines)
    return align([parsed.execute(headers)] + lines)


def align(lines: list[str], min_width: int = 10) -> str:
    """Go's tabwriter as docker sets it up: minimum width 10, padding 3."""
    cells = [line.split("\t") for line in lines]
    ncols = max(len(c) for c in cells)
    widths = [max([min_width] + [len(c[i]) + 3 for c in cells if i < len(c) - 1])
              for i in range(ncols)]
    out = []
    for c in cells:
        out.append("".join(cell.ljust(widths[i]) if i < len(c) - 1 else cell for i, cell in enumerate(c)))
    return "".join(line + "\n" for line in out)


def human_size(size: float) -> str:
    """docker's units.HumanSize: decimal units, three significant digits."""
    units = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]
    i = 0
    while size >= 1000 and i < len(units) - 1:
        size /= 1000
        i += 1
    return f"{size:.3g}{units[i]}"


def human_since(then: _dt.datetime, now: float | None = None) -> str:
    """docker's units.HumanDuration, plus " ago"."""
    now_dt = _dt.datetime.fromtimestamp(time.time() if now is None else now, _dt.timezone.utc)
    secs = (now_dt - then).total_seconds()
    if secs < 1:
        return "Less than a second ago"
    if secs < 2:
        return "1 second ago"
    if secs < 60:
        return f"{int(secs)} seconds ago"
    minutes = int(secs // 60)
    if minutes == 1:
        return "About a minute ago"
    if minutes < 60:
        return f"{minutes} minutes ago"
    hours = int((secs + 1800) // 3600)
    if hours == 1:
        return "About an hour ago"
    if hours < 48:
        return f"{hours} hours ago"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days ago"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks ago"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months ago"
    return f"{int(secs // 3600) // 24 // 365} years ago"


def _parse_time(text: str) -> _dt.datetime | None:
    if not text:
        return None
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", text)
    if not m:
        return None
    tz = m.group(3) or "Z"
    base = _dt.datetime.fromisoformat(m.group(1) + (m.group(2) or "")[:7] + ("+00:00" if tz == "Z" else tz))
    return base.astimezone(_dt.timezone.utc)
