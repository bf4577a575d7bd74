"""``lazyfs stats``: the stats document as a table whose columns do not contradict each other."""

from __future__ import annotations

from lazyfs.cli.statstable import COLUMNS, legend, render_stats


def layer(**kw) -> dict:
    base = {"digest": "sha256:" + "ab" * 32, "format": "gzip", "mode": "lazy", "reason": "",
            "size": 211_000_000, "bytes_fetched": 0, "range_bytes": 0, "pulled_bytes": 0,
            "pull_reason": "", "local": False, "prefetch": "", "requests": 0, "cache_hits": 0,
            "cache_misses": 0, "shared_fetches": 0, "verify_failures": 0, "retries": 0,
            "failed_reads": 0, "readahead_pieces": 0}
    return base | kw


def table(doc: dict) -> list[dict[str, str]]:
    lines = render_stats(doc).splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("LAYER"))
    names = [n for n, _ in COLUMNS]
    return [dict(zip(names, line.split())) for line in lines[head + 1:head + 1 + len(doc["layers"])]]


def test_a_layer_downloaded_whole_is_not_called_lazy_and_its_bytes_are_whole():
    pulled = layer(bytes_fetched=211_000_000, pulled_bytes=211_000_000, local=True,
                   pull_reason="the whole blob was asked for (index build or export)",
                   cache_misses=1, indexing={"state": "done", "received": 211_000_000,
                                             "indexed": 211_000_000})
    doc = {"reference": "r", "digest": "sha256:x", "open_seconds": 1.0, "index": "ready",
           "index_seconds": 3.5, "layers": [pulled]}
    row = table(doc)[0]
    assert row["MODE"] == "local" and row["WHOLE"] == "211MB" and row["FETCHED"] == "211MB"
    assert row["RANGES"] == "-" and row["REQS"] == "0" and row["DECODED"] == "1"
    text = render_stats(doc)
    assert "downloaded whole: the whole blob was asked for" in text
    assert "index built in 3.50s" in text
    doc["fuse"] = {"reads": 3, "bytes_read": 6000, "errors": 0, "open_files": 1}
    assert "served  3 reads, 6kB, 0 errors, 1 files open" in render_stats(doc)


def test_range_reads_are_bytes_and_requests_side_by_side():
    ranged = layer(format="estargz", bytes_fetched=340_000, range_bytes=340_000, requests=4,
                   cache_misses=7, cache_hits=2)
    row = table({"layers": [ranged]})[0]
    assert (row["MODE"], row["FETCHED"], row["RANGES"], row["REQS"]) == ("lazy", "340kB", "340kB", "4")
    assert (row["WHOLE"], row["CACHED"], row["DECODED"]) == ("-", "2", "7")


def test_an_index_being_built_reads_as_a_sentence():
    doc = {"index": "indexing", "index_seconds": None, "layers": [
        layer(indexing={"state": "indexing", "received": 5_000_000, "indexed": 4_000_000}),
        layer(digest="sha256:" + "cd" * 32, indexing={"state": "done", "received": 1, "indexed": 1})]}
    text = render_stats(doc)
    assert "index indexing" not in text
    assert "index being built in the background (1 of 2 layers done)" in text
    assert "abababababab: being indexed: 5MB received, 4MB indexed" in text


def test_every_column_is_explained():
    lines = render_stats({"layers": []}).splitlines()
    assert [n for n, _ in COLUMNS] == next(line for line in lines if line.startswith("LAYER")).split()
    assert all(f"  {name}" in legend() for name, _ in COLUMNS)


def test_retries_failed_reads_and_reads_out_of_time_are_told():
    text = render_stats({"layers": [layer(retries=5, failed_reads=2, timeouts=1)]})
    assert "abababababab: 5 requests retried" in text
    assert "abababababab: 2 reads failed" in text
    assert "abababababab: 1 of them out of time (read deadline)" in text
