"""One look for every figure: the seaborn theme, a colour-blind-safe palette, print sizes, legends outside the data,
and the one function that writes a figure as PDF + PNG.

Figures are drawn at the size they are printed (about ``WIDTH`` inches wide, fonts ``FONT_PT`` points, ticks and
legends half a point less): the paper includes them at their natural size (``\\includegraphics{figures/x.pdf}``),
so their fonts stay at 9-9.5 pt, no smaller than its 9 pt (``\\small``) captions.

Example:
    >>> apply_style()
    >>> fig, ax = new_figure(1, 1)
    >>> [p.suffix for p in save_figure(fig, "paper/figures", "example")]            # doctest: +SKIP
    ['.pdf', '.png']
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import seaborn as sns

__all__ = ["FONT_PT", "WIDTH", "Drawn", "apply_style", "colors_for", "legend_below", "new_figure", "note", "save_figure"]

WIDTH = 6.0  # inches: the printed width of a full-width figure
FONT_PT = 9.5
PALETTE = "colorblind"  # seaborn's colour-blind-safe qualitative palette (Wong-like); markers add a second cue
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


@dataclass
class Drawn:
    """A drawn figure with its caption data (what it shows, from which files, the sources it cites) and notes
    (what was left out and why). Shown inline by Jupyter (``_repr_png_``).

    Example:
        >>> d = Drawn(new_figure(1, 1)[0], "caption", ["note"]); d.caption
        'caption'
    """

    fig: object
    caption: str
    notes: list[str] = field(default_factory=list)

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=110)
        return buf.getvalue()


def apply_style() -> None:
    """The project's seaborn theme (whitegrid, colour-blind palette, print-size fonts, embedded TrueType in PDFs)."""
    sns.set_theme(style="whitegrid", palette=PALETTE, context="paper", rc={
        "font.size": FONT_PT, "axes.titlesize": FONT_PT, "axes.labelsize": FONT_PT, "xtick.labelsize": FONT_PT - 0.5,
        "ytick.labelsize": FONT_PT - 0.5, "legend.fontsize": FONT_PT - 0.5, "legend.title_fontsize": FONT_PT,
        "pdf.fonttype": 42, "ps.fonttype": 42, "savefig.bbox": "tight", "savefig.pad_inches": 0.03,
        "axes.titleweight": "normal", "lines.linewidth": 1.4, "lines.markersize": 4.5})


def new_figure(rows: int, cols: int, height_per_row: float = 2.3, width: float = WIDTH, **kw):
    """``plt.subplots`` at print size with the style applied; ``squeeze=False`` so axes are always 2-D.

    Example:
        >>> fig, axes = new_figure(1, 2); axes.shape
        (1, 2)
    """
    apply_style()
    return plt.subplots(rows, cols, figsize=(width, height_per_row * rows), squeeze=False, **kw)


def colors_for(labels) -> dict:
    """label -> colour of the colour-blind palette, in first-seen order (cycles after 10).

    Example:
        >>> list(colors_for(["ar", "fixed"]))
        ['ar', 'fixed']
    """
    labels = list(dict.fromkeys(labels))
    pal = sns.color_palette(PALETTE, 10)
    return {label: pal[i % len(pal)] for i, label in enumerate(labels)}


def markers_for(labels) -> dict:
    """label -> a marker, in first-seen order (the second cue beside colour)."""
    labels = list(dict.fromkeys(labels))
    return {label: MARKERS[i % len(MARKERS)] for i, label in enumerate(labels)}


def legend_below(fig, handles=None, labels=None, ncol: int = 3, title: str | None = None) -> None:
    """One legend for the whole figure, below the axes, so it never covers data (duplicate labels merged)."""
    if handles is None:
        seen: dict = {}
        for ax in fig.axes:
            for h, label in zip(*ax.get_legend_handles_labels()):
                seen.setdefault(label, h)
        handles, labels = list(seen.values()), list(seen)
    if not handles:
        return
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol, frameon=False,
               title=title)


def note(ax, text: str) -> None:
    """A grey line of text inside an empty panel (e.g. why it holds no data)."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)


def save_figure(fig, out_dir: str | Path, stem: str, dpi: int = 200, formats=("pdf", "png")) -> list[Path]:
    """Write ``<out_dir>/<stem>.pdf`` and ``.png`` (or ``formats``; tight bounding box, legends included); close
    the figure.

    Example:
        >>> fig, ax = new_figure(1, 1); [p.name for p in save_figure(fig, tmp_dir, "x")]  # doctest: +SKIP
        ['x.pdf', 'x.png']
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.{fmt}" for fmt in formats]
    for path in paths:
        fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return paths
