"""The delaying proxy of the benchmarks: the one the tests use (a fixed
delay per request and per connection, optionally a rate cap per connection)."""

from __future__ import annotations

from lazyfs.testing.proxy import DelayProxy, TcpProxy, ThrottleProxy

__all__ = ["DelayProxy", "TcpProxy", "ThrottleProxy"]
