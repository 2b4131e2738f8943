"""Every figure of the paper from results directories, as PDF + PNG, with their caption data; never reruns a model.

    python -m analysis.make_figures runs/ --out paper/figures
    python -m analysis.make_figures runs/run/a runs/calibrate/b runs/tune/c --out paper/figures --only acceptance

RESULTS are directories written by ``experiments.run``, ``calibrate``, ``tune``, ``replay_report`` or ``bench``, or
folders above them (``analysis.results.find_results``). Writes ``<name>.pdf`` and ``<name>.png`` per figure and
``captions.json`` ({name: {caption, notes, files}}: what each figure shows, from which directories, the sources it
cites). A figure whose kind of result is missing is skipped with one line saying so; bad input (a missing path, a
folder without results, an unreadable file, an unknown figure name) is one line on stderr and exit code 2.

Figures: ``speed_quality`` (every policy, CIs, Pareto front), ``acceptance`` (by depth per drafter, with published
MTP references), ``reliability_<dir>`` (per depth, raw vs calibrated; one per calibration run), ``threshold_sweep``,
``draft_lengths``, ``replay_agreement``, ``optuna_front``, ``cost``.

Example:
    >>> make_figures(["runs"], "paper/figures")                        # doctest: +SKIP
    {'speed_quality': [PosixPath('paper/figures/speed_quality.pdf'), ...], ...}
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from .acceptance import acceptance_figure
from .agreement import cost_figure, replay_agreement_figure
from .behaviour import draft_length_figure
from .pareto import optuna_front_figure
from .reliability import reliability_depth_figure
from .results import Results, ResultsError, Skip, find_results
from .speed_quality import speed_quality_figure, threshold_sweep_figure
from .style import save_figure

__all__ = ["FIGURES", "draw", "make_figures", "main"]

FIGURES = {
    "speed_quality": speed_quality_figure,
    "acceptance": acceptance_figure,
    "reliability": None,  # one per calibration directory (reliability_depth_figure)
    "threshold_sweep": threshold_sweep_figure,
    "draft_lengths": draft_length_figure,
    "replay_agreement": replay_agreement_figure,
    "optuna_front": optuna_front_figure,
    "cost": cost_figure,
}


def _slug(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", path.name).strip("_") or "run"


def _no_calibration():
    raise Skip("no experiments.calibrate results (report.json + rows.parquet)")


def _drawings(results: Results, only):
    """(name, callable returning a Drawn) for every figure asked for."""
    for name, fn in FIGURES.items():
        if only and name not in only:
            continue
        if name != "reliability":
            yield name, (lambda fn=fn: fn(results))
            continue
        if not results.calibration:
            yield name, _no_calibration
        slugs = [_slug(d) for d in results.calibration]
        for i, (d, slug) in enumerate(zip(results.calibration, slugs)):
            stem = f"reliability_{slug}" if slugs.count(slug) == 1 else f"reliability_{slug}_{i}"
            yield stem, (lambda d=d: reliability_depth_figure(d))


def draw(name: str, results: Results, log=print):
    """One figure by name (``FIGURES``) as an ``analysis.style.Drawn``, or None after logging why it is skipped;
    for notebooks. ``reliability`` gives a list (one per calibration run).

    Example:
        >>> draw("acceptance", find_results(["runs"]))                    # doctest: +SKIP
    """
    out = []
    for stem, fn in _drawings(results, [name]):
        try:
            out.append(fn())
        except Skip as why:
            log(f"skipped {stem}: {why}")
    return out if name == "reliability" else (out[0] if out else None)


def make_figures(paths, out: str | Path = "paper/figures", only=None, log=print, formats=("pdf", "png"),
                 dpi: int = 200) -> dict[str, list[Path]]:
    """Draw every figure the results allow into ``out``; returns {name: [pdf, png]}. Raises ``ResultsError``.

    Example:
        >>> sorted(make_figures(["runs/drafters"], "figs"))          # doctest: +SKIP
        ['acceptance', 'draft_lengths', 'speed_quality']
    """
    unknown = sorted(set(only or ()) - set(FIGURES))
    if unknown:
        raise ResultsError(f"unknown figure {', '.join(unknown)}; allowed: {', '.join(FIGURES)}")
    results = find_results(paths)
    out = Path(out)
    log("results: " + ", ".join(f"{n} {k}" for k, n in results.kinds().items()))
    written, captions = {}, {}
    for name, draw in _drawings(results, only):
        try:
            drawn = draw()
        except Skip as why:
            log(f"skipped {name}: {why}")
            continue
        files = save_figure(drawn.fig, out, name, dpi=dpi, formats=formats)
        written[name] = files
        captions[name] = {"caption": drawn.caption, "notes": drawn.notes, "files": [f.name for f in files]}
        log(f"wrote {name}: " + ", ".join(str(f) for f in files) + "".join(f"\n  note: {n}" for n in drawn.notes))
    if written:
        cap = out / "captions.json"
        old = json.loads(cap.read_text()) if cap.is_file() else {}
        cap.write_text(json.dumps({**old, **captions}, indent=1) + "\n")
    return written


def main(argv=None) -> int:
    """The command line (see the module docstring); 0 on success, 2 on bad input."""
    ap = argparse.ArgumentParser(prog="python -m analysis.make_figures", description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="*", metavar="RESULTS", help="results directories (or folders above them)")
    ap.add_argument("--out", default="paper/figures", help="output folder (default: paper/figures)")
    ap.add_argument("--only", nargs="*", default=None, help="figure names: " + ", ".join(FIGURES))
    ap.add_argument("--dpi", type=int, default=200, help="PNG resolution (default 200)")
    a = ap.parse_args(argv)
    try:
        make_figures(a.results, a.out, a.only, dpi=a.dpi)
    except ResultsError as err:
        print(f"make_figures: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
