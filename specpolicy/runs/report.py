"""The console table a run prints at the end: one line per policy with the headline figures of ``summary.json``.

Example:
    >>> print(console_table(json.load(open(run_dir / "summary.json"))))
    policy      tpf           tok/s   speedup          lossy err  exact match
    ar          1.00          103.2   1.00             0.000      1.00
"""

from __future__ import annotations

__all__ = ["console_table"]


def _v(fig, fmt: str, ci: bool = False) -> str:
    if not fig or fig.get("value") is None:
        return "-"
    text = format(fig["value"], fmt)
    lo, hi = fig.get("ci95", [None, None])
    if ci and lo is not None and hi is not None:
        text += f" [{format(lo, fmt)},{format(hi, fmt)}]"
    return text


def console_table(summary: dict) -> str:
    """A fixed-width table: policy, tpf (95% CI), tok/s, speedup vs ar (95% CI), lossy error rate, exact match.

    Example:
        >>> console_table({"policies": {}, "reference": None}).splitlines()[0].split()[:2]
        ['policy', 'tpf']
    """
    head = ("policy", "tpf [95% CI]", "tok/s", "speedup [95% CI]", "lossy err", "exact match")
    rows = [head]
    for label, s in summary["policies"].items():
        rows.append((
            label, _v(s.get("tpf"), ".2f", ci=True), _v(s.get("tokens_per_s"), ".1f"),
            _v(s.get("speedup_vs_ar"), ".2f", ci=True), _v(s.get("lossy_error_rate"), ".3f"),
            _v(s.get("exact_match_rate"), ".2f"),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    ref = summary.get("reference")
    lines.append(f"(speedup and exact match against {ref}, same run)" if ref else "(no ar reference: baselines=false)")
    return "\n".join(lines)
