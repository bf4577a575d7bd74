"""A registry of our own for one benchmark, stopped by its pid at the end."""

from __future__ import annotations

import contextlib
import shutil
from typing import Iterator

from lazyfs.testing.realregistry import Registry, start_registry

from .common import BENCH_DIR
from .reglog import Cursor


@contextlib.contextmanager
def running_registry(name: str) -> Iterator[tuple[Registry, Cursor]]:
    root = BENCH_DIR / "work" / f"registry-{name}"
    shutil.rmtree(root, ignore_errors=True)
    reg = start_registry(root)
    try:
        yield reg, Cursor(reg.log_path)
    finally:
        reg.stop()
        shutil.rmtree(root, ignore_errors=True)
