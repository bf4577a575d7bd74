"""Directories nobody may write, not even root (for whom ``chmod`` is not enough)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def immutable(*paths: Path):
    """``chattr +i``: unwritable even for root, where ``chmod`` is not enough."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = []
    try:
        for p in paths:
            if subprocess.run(["chattr", "+i", str(p)], capture_output=True).returncode:
                pytest.skip(f"cannot make {p} immutable here")
            done.append(p)
        yield
    finally:
        for p in done:
            subprocess.run(["chattr", "-i", str(p)], check=True)
