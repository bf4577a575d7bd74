"""Benchmarks of lazyfs against full pulls and the machine's own ceilings.

Each ``bench_*`` module is one subcommand of ``scripts/bench``; the rest are
the small pieces they share (registry, mounts, probes, synthetic images).
"""
