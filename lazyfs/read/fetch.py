"""Fetching and decoding pieces' bytes, the steps of a read that cost a
round trip or CPU.

Coalescing lives here and nowhere else: the registry client sends the spans
it is given as they are, so the reader alone decides that pieces close in the
blob are worth one range (``MERGE_GAP``), and all spans of one read go out in
one multi-range request where the registry takes them.
"""

from __future__ import annotations

from typing import Iterable

import trio

from ..blob import BlobSource
from ..errors import (DigestMismatch, LayerFormatError, LazyfsError, RegistryError,
                      RegistryUnreachable, UnsafeEntry)
from ..formats import ContentReader, Piece

MERGE_GAP = 64 * 1024
"""Pieces closer than this in the blob are fetched in one range: a few wasted
bytes cost less than another round trip."""
INLINE_DECODE = 64 * 1024
"""Pieces smaller than this decode on the event loop: a worker-thread hop
costs more than the work."""

Span = tuple[int, int]


def group(ranges: Iterable[Span], gap: int = MERGE_GAP) -> list[tuple[Span, list[Span]]]:
    """The spans to fetch for ``ranges`` of a blob, each with the ranges it holds."""
    groups: list[tuple[list[int], list[Span]]] = []
    for r in sorted(set(ranges)):
        if groups and r[0] <= groups[-1][0][1] + gap:
            bounds, members = groups[-1]
            bounds[1] = max(bounds[1], r[1])
            members.append(r)
        else:
            groups.append(([r[0], r[1]], [r]))
    return [((b[0], b[1]), members) for b, members in groups]


async def fetch(blob: BlobSource, ranges: Iterable[Span],
                gap: int = MERGE_GAP) -> tuple[dict[Span, bytes], int, int]:
    """The bytes of each range, the requests it took and the bytes they carried."""
    groups = group(ranges, gap)
    spans = [span for span, _ in groups]
    parts, requests = await read_spans(blob, spans)
    out: dict[Span, bytes] = {}
    for ((base, _), members), part in zip(groups, parts):
        for start, end in members:
            out[start, end] = part[start - base:end - base]
    return out, requests, sum(map(len, parts)) if requests else 0


async def read_spans(blob: BlobSource, spans: list[Span]) -> tuple[list[bytes], int]:
    """The bytes of each span and how many requests it took; blobs that can
    answer several ranges at once (``read_ranges``) are asked that way."""
    many = getattr(blob, "read_ranges", None)
    if many is not None:
        return await many(spans)
    return [await blob.read_range(s, e) for s, e in spans], len(spans)


async def decode(content: ContentReader, piece: Piece, raw: bytes) -> bytes:
    """Decode and verify: on the event loop if small, else in a worker thread."""
    if len(raw) < INLINE_DECODE and piece.length < INLINE_DECODE:
        return content.decode(piece, raw)
    return await trio.to_thread.run_sync(content.decode, piece, raw)


def retryable(e: LazyfsError) -> bool:
    """Failures another attempt may not meet: the network's, and bytes that
    arrived wrong (the registry's copy is checked by digest, so a mismatch
    is more likely a bad transfer than a bad blob)."""
    if isinstance(e, UnsafeEntry):
        return False
    return isinstance(e, (RegistryError, RegistryUnreachable, DigestMismatch, LayerFormatError))
