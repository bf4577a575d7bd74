"""``stats --timeline``: a mount's fetches over time, as a picture.

One row per layer; each request is a bar from when it was sent to when it
was answered, placed at its offset in the layer (its height is its size,
at least a hairline). Reads, trace replay, readahead and background indexing
have colours of their own; pieces found in the cache (memory or disk) are
marks. matplotlib is an optional extra (``pip install lazyfs[plot]``),
imported only here.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UsageError

COLOURS = {"read": "#d62728", "prefetch": "#1f77b4", "readahead": "#ff7f0e",
           "index": "#7f7f7f", "hit": "#2ca02c"}
LABELS = {"read": "read (waited for)", "prefetch": "trace replay", "readahead": "readahead",
          "index": "download + index", "hit": "cache hit (memory or disk)"}
MIN_BAR = 0.002
"""Seconds: a bar shorter than this is drawn this wide, so it shows."""


def draw_timeline(doc: dict, path: str | Path, title: str = "") -> None:
    """Draw the event document ``doc`` (``EventLog.document``) into ``path``
    (.svg or .png)."""
    path = Path(path)
    if path.suffix.lower() not in (".svg", ".png"):
        raise UsageError(f"{path}: the timeline is drawn as .svg or .png")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        raise UsageError("stats --timeline needs matplotlib: pip install 'lazyfs[plot]'") from None
    layers = doc.get("layers") or []
    events = doc.get("events") or []
    rows = max([len(layers)] + [e[2] + 1 for e in events]) or 1
    sizes = [max(1, layers[i]["size"]) if i < len(layers) else 1 for i in range(rows)]
    for _, _, layer, _, offset, size in events:
        sizes[layer] = max(sizes[layer], offset + size)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.9 * rows))
    bars: dict[str, list] = {}
    for start, end, layer, kind, offset, size in events:
        y = layer + offset / sizes[layer] * 0.9
        h = max(size / sizes[layer] * 0.9, 0.004)
        if kind == "hit":
            ax.plot([end], [y + h / 2], marker="|", color=COLOURS["hit"], markersize=6)
            bars.setdefault(kind, [])
            continue
        bars.setdefault(kind, []).append(((start, max(end - start, MIN_BAR)), (y, h)))
    for kind, items in bars.items():
        for (x, w), (y, h) in items:
            ax.broken_barh([(x, w)], (y, h), facecolors=COLOURS.get(kind, "black"),
                           edgecolor="none", alpha=0.8)
    ax.set_yticks([i + 0.45 for i in range(rows)])
    ax.set_yticklabels([_layer_label(layers, i) for i in range(rows)])
    ax.set_ylim(-0.05, rows)
    ax.set_xlabel("seconds since the image was opened")
    ax.set_title(title or doc.get("reference", ""), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=[Patch(color=COLOURS[k], label=LABELS[k]) for k in COLOURS if k in bars],
              loc="upper right", fontsize=8)
    if doc.get("dropped"):
        ax.text(0.0, -0.12, f"{doc['dropped']} events not kept", transform=ax.transAxes,
                fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=90)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror}") from None
    finally:
        plt.close(fig)


def _layer_label(layers: list[dict], i: int) -> str:
    if i >= len(layers):
        return f"layer {i}"
    return f"layer {i}\n{layers[i]['digest'][7:19]}"
