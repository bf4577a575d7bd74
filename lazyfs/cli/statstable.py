"""What ``lazyfs stats`` and ``cat --stats`` print: the image's ``stats()``
document as a table a user can read without knowing the reader's insides.

Every column counts one thing, so no two contradict each other: bytes from
the registry are split into whole-blob downloads and range reads, and
pieces of content into those the piece cache had and those decoded from
the layer (whether its bytes came by range or from a local copy).
"""

from __future__ import annotations

from .render import align, human_size

COLUMNS = [
    ("LAYER", "the layer digest, shortened"),
    ("FORMAT", "how the layer is compressed and indexed (gzip, zstd, estargz, …)"),
    ("MODE", "lazy: content is fetched by HTTP range requests as it is read; local: the "
             "whole blob is in the local store and reads go there; full pull: the layer "
             "cannot be read by ranges and is downloaded whole (why: in the notes)"),
    ("SIZE", "the compressed size of the layer blob"),
    ("FETCHED", "bytes downloaded from the registry for this layer: WHOLE plus RANGES"),
    ("WHOLE", "bytes of whole-blob downloads (index build, prefetch, fallback, --full-pull)"),
    ("RANGES", "bytes received by range requests for reads"),
    ("REQS", "how many range requests that took"),
    ("CACHED", "pieces of file content found in the piece cache"),
    ("DECODED", "pieces decompressed from the layer's bytes (a range read or the local "
                "copy), then cached"),
    ("CORRUPT", "pieces whose bytes did not decode or verify (the read failed)"),
]


def legend() -> str:
    """The columns, explained: ``lazyfs stats --help`` shows this."""
    return "columns:\n" + "\n".join(f"  {name:<9}{text}" for name, text in COLUMNS)


def render_stats(doc: dict) -> str:
    layers = doc.get("layers", [])
    rows = ["\t".join(name for name, _ in COLUMNS)] + [_row(layer) for layer in layers]
    notes = [note for layer in layers for note in _notes(layer)]
    notes += [_mirror_note(m) for m in doc.get("mirrors", [])]
    if doc.get("cache_corrupt"):
        notes.append(f"piece cache: {doc['cache_corrupt']} torn or corrupt pieces found and dropped")
    out = "\n".join(_head(doc)) + "\n" + align(rows, min_width=0)
    return out + "".join(f"  {note}\n" for note in notes)


def _head(doc: dict) -> list[str]:
    lines = [f"image   {doc.get('reference', '')}", f"digest  {doc.get('digest', '')}"]
    opened = f"opened in {doc.get('open_seconds', 0):.2f}s"
    fuse = doc.get("fuse")
    if fuse:
        lines.append(f"served  {fuse.get('reads', 0)} reads, {human_size(fuse.get('bytes_read', 0))}, "
                     f"{fuse.get('errors', 0)} errors, {fuse.get('open_files', 0)} files open")
    index = doc.get("index")
    if index is None:
        return lines + [opened]
    took = doc.get("index_seconds")
    if index == "ready":
        state = "index built" + (f" in {took:.2f}s" if took is not None else "")
    elif index.startswith("failed"):
        state = "index " + index
    else:
        streams = [layer["indexing"] for layer in doc.get("layers", []) if layer.get("indexing")]
        done = sum(1 for s in streams if s["state"] == "done")
        state = f"index being built in the background ({done} of {len(streams)} layers done)"
    if doc.get("published_index"):
        state += f", published as {doc['published_index']}"
    return lines + [f"{opened}; {state}"]


def mode(layer: dict) -> str:
    if layer.get("local"):
        return "local"
    return "lazy" if layer["mode"] == "lazy" else layer["mode"]


def _row(layer: dict) -> str:
    whole, ranges = layer.get("pulled_bytes", 0), layer.get("range_bytes", layer["bytes_fetched"])
    return "\t".join([
        layer["digest"].partition(":")[2][:12], layer["format"], mode(layer),
        human_size(layer["size"]), human_size(whole + ranges),
        human_size(whole) if whole else "-", human_size(ranges) if ranges else "-",
        str(layer["requests"]), str(layer["cache_hits"]), str(layer["cache_misses"]),
        str(layer["verify_failures"])])


def _mirror_note(m: dict) -> str:
    """One line per mirror: in use or skipped (and why), single-range or not."""
    text = f"mirror {m['host']}: {m.get('requests', 0)} answers"
    if m.get("state") == "skipped":
        text += (f", skipped for {m.get('skipped_for_seconds', 0):.0f}s more after "
                 f"{m.get('failures', 0)} failures ({m.get('last_failure', '')})")
    elif m.get("last_failure"):
        text += f", failed before ({m['last_failure']})"
    if m.get("single_range"):
        text += f"; single ranges only ({m['single_range']})"
    return text


def _notes(layer: dict) -> list[str]:
    short = layer["digest"].partition(":")[2][:12]
    notes = []
    if layer.get("reason"):
        notes.append(f"not read by ranges: {layer['reason']}")
    if layer.get("pulled_bytes"):
        notes.append(f"downloaded whole: {layer.get('pull_reason') or 'asked for'}")
    elif layer.get("local"):
        notes.append("whole blob was already in the local store")
    indexing = layer.get("indexing")
    if indexing and indexing["state"] == "indexing":
        notes.append(f"being indexed: {human_size(indexing['received'])} received, "
                     f"{human_size(indexing['indexed'])} indexed")
    elif indexing and indexing["state"] != "done":
        notes.append(f"indexing {indexing['state']}")
    if layer.get("prefetch"):
        notes.append(f"prefetch {layer['prefetch']}")
    counts = [(layer.get("shared_fetches", 0), "pieces waited for a fetch already under way"),
              (layer.get("readahead_pieces", 0), "pieces read ahead"),
              (layer.get("retries", 0), "requests retried"),
              (layer.get("failed_reads", 0), "reads failed"),
              (layer.get("timeouts", 0), "of them out of time (read deadline)")]
    notes += [f"{n} {what}" for n, what in counts if n]
    return [f"{short}: {note}" for note in notes]
