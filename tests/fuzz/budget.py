"""How hard the fuzz tests try: a small default that keeps the whole fuzz
suite under a minute, or ``LAZYFS_FUZZ_EXAMPLES`` examples per test for a
longer run (see docs/fuzzing.md)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("LAZYFS_FUZZ_EXAMPLES", "0") or 0)


def fuzz(default: int = 150):
    """``@fuzz()`` on a ``@given`` test: its example budget, no deadline (a
    loaded machine must not fail a test), no database writes unless a long
    run asks for them."""
    return settings(max_examples=EXAMPLES or default, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture],
                    database=None if not EXAMPLES else settings.default.database)
