"""Helpers for testing code that uses lazyfs, and lazyfs itself; never imported by lazyfs."""
