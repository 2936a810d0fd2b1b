"""Figures shared by the methods: how every figure is saved, and metric-vs-layer curves with CI bands.

Every figure is saved as PNG and PDF with the running job's figure settings (``figures`` config section) and
its provenance embedded (a PNG text chunk and the PDF's Keywords).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.layout_engine import PlaceHolderLayoutEngine  # noqa: E402

from kmap.core.io import atomic_output  # noqa: E402
from kmap.core.provenance import KEY, to_json  # noqa: E402

# Outside a job (tests, notebooks) figures use these settings and carry no provenance unless configured.
_SETTINGS: dict[str, Any] = {"dpi": 150}
_PROVENANCE: dict[str, Any] | None = None


def configure(settings: Mapping[str, Any] | None = None, provenance: Mapping[str, Any] | None = None) -> None:
    """Figure settings (``dpi``) and provenance for figures saved outside a job."""
    global _PROVENANCE
    _SETTINGS.update(settings or {})
    _PROVENANCE = dict(provenance) if provenance is not None else None


def _context() -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The running job's figure settings and provenance (``kmap.core.job.CURRENT``), else ``configure``'s."""
    from kmap.core import job

    if job.CURRENT is not None and _PROVENANCE is None:  # an explicit configure() wins
        return {**_SETTINGS, **job.CURRENT.params.get("figures", {})}, job.CURRENT.provenance
    return _SETTINGS, _PROVENANCE


def _metadata(fmt: str, provenance: dict[str, Any] | None) -> dict[str, str]:
    if provenance is None:
        return {}
    text = to_json(provenance)
    return {KEY: text} if fmt == "png" else {"Subject": KEY, "Keywords": text}


def save(fig: plt.Figure, png: str | Path, pdf: str | Path) -> None:
    settings, provenance = _context()
    # Laid out and measured once for both files. savefig draws the whole figure an extra time per file, without
    # rendering, when the figure has a layout engine (tight_layout() leaves a placeholder one) or the box is
    # "tight"; laying out text is most of a figure's cost. A live engine (constrained layout) runs here once, and
    # the positions it set stay.
    fig.set_dpi(settings["dpi"])
    engine = fig.get_layout_engine()
    if engine is not None and not isinstance(engine, PlaceHolderLayoutEngine):
        fig.draw_without_rendering()
    fig.set_layout_engine(None)
    box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
    for path in (png, pdf):
        fmt = Path(path).suffix.lstrip(".")
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=settings["dpi"], bbox_inches=box, metadata=_metadata(fmt, provenance))
    plt.close(fig)


def _layer_ticks(ax: plt.Axes, layers: np.ndarray) -> None:
    step = max(1, len(layers) // 10)
    ticks = layers[::step]
    ax.set_xticks(ticks, ["emb" if t == -1 else str(t) for t in ticks])


def curve_figure(
    metrics: pd.DataFrame, out_png: str | Path, out_pdf: str | Path, title: str, caption: str | None = None
) -> int:
    """One panel per metric: value vs layer with its 95 % bootstrap band. Returns the number of panels."""
    names = list(dict.fromkeys(metrics["metric"]))
    cols = min(3, max(1, len(names)))
    rows = int(np.ceil(len(names) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows + (0.5 if caption else 0)), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        part = metrics[metrics["metric"] == name].sort_values("layer")
        layers = part["layer"].to_numpy()
        ax.plot(layers, part["value"], marker="o", ms=3)
        if part["ci_low"].notna().any():
            ax.fill_between(layers, part["ci_low"], part["ci_high"], alpha=0.25, lw=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("layer")
        _layer_ticks(ax, layers)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle(title)
    if caption:
        fig.text(0.01, 0.0, caption, fontsize=8, va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.04 if caption else 0, 1, 1))
    save(fig, out_png, out_pdf)
    return len(names)
