"""Compressible text for layers: words of random letters, so that gzip and
zstd have something to do and every offset still holds distinct bytes."""

from __future__ import annotations

import random


def words(rng: random.Random, size: int, vocabulary: int = 4000) -> bytes:
    pool = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
            for _ in range(vocabulary)]
    out, n = [], 0
    while n < size:
        line = b" ".join(rng.choices(pool, k=12)) + b"\n"
        out.append(line)
        n += len(line)
    return b"".join(out)[:size]
