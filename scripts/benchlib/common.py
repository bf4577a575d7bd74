"""Shared plumbing: where results go, tables, timers, machine facts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / ".bench"
PYTHON = str(REPO / ".venv" / "bin" / "python")

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@dataclass
class Run:
    """One subcommand's run: its rows and notes, written as JSON at the end."""

    name: str
    quick: bool
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    """Markdown, as printed; saved beside the JSON for the docs."""
    started: float = field(default_factory=time.time)

    def add(self, **row) -> dict:
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.notes.append(text)

    def table(self, title: str, rows: list[dict], columns: list[tuple[str, str]]) -> None:
        self.tables.append(table(title, rows, columns))

    def save(self, extra: dict | None = None) -> Path:
        BENCH_DIR.mkdir(exist_ok=True)
        path = BENCH_DIR / f"results-{self.name}.json"
        doc = {"benchmark": self.name, "quick": self.quick, "machine": machine(),
               "commit": _commit(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
               "seconds": round(time.time() - self.started, 1),
               "rows": self.rows, "notes": self.notes, **(extra or {})}
        path.write_text(json.dumps(doc, indent=2) + "\n")
        path.with_suffix(".md").write_text("\n".join(self.tables))
        print(f"results: {path} (tables: {path.with_suffix('.md').name})", flush=True)
        return path


def machine() -> dict:
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {"nproc": os.cpu_count(), "mem_gib": round(mem_kb / 2**20, 1),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "kernel": platform.release(), "python": platform.python_version()}


DROP_CACHES = False
"""Set by ``--drop-caches``: dropping slows every process on the machine,
so it is asked for, never the default."""


def _commit() -> str:
    """The commit measured, marked when the working tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "lazyfs"],
                           cwd=REPO, capture_output=True, text=True).stdout.strip()
    return head + (" + uncommitted changes in lazyfs/" if dirty else "")


def drop_caches() -> bool:
    """Drop the page cache if asked to; False where not asked or refused."""
    if not DROP_CACHES:
        return False
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def rss_mib(pid: int | str = "self") -> tuple[float, float]:
    """(current, peak) resident set size of a process in MiB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss / 1024, hwm / 1024


def tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def secs(s: float | None) -> str:
    return "-" if s is None else f"{s:.3f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def table(title: str, rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Print ``rows`` as a Markdown table (pasted as is into the docs)."""
    head = [label for _, label in columns]
    body = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    text = "\n".join(lines) + "\n"
    print("\n" + text, flush=True)
    return text


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value).replace("|", "/")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
