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


def console_table(summary: dict, precision: bool = False) -> str:
    """A fixed-width table: policy, tpf (95% CI), tok/s, speedup vs ar (95% CI), lossy error rate, exact match;
    with ``precision`` (half precision, or any divergence) also the near-tie and mismatch shares of lossless
    policies, and a BUG line for a lossless policy with a mismatch.

    Example:
        >>> console_table({"policies": {}, "reference": None}).splitlines()[0].split()[:2]
        ['policy', 'tpf']
    """
    head = ("policy", "tpf [95% CI]", "tok/s", "speedup [95% CI]", "lossy err", "exact match")
    head += ("near-tie", "mismatch") if precision else ()
    rows, bugs = [head], []
    for label, s in summary["policies"].items():
        row = (
            label, _v(s.get("tpf"), ".2f", ci=True), _v(s.get("tokens_per_s"), ".1f"),
            _v(s.get("speedup_vs_ar"), ".2f", ci=True), _v(s.get("lossy_error_rate"), ".3f"),
            _v(s.get("exact_match_rate"), ".2f"),
        )
        if precision:
            row += tuple(f"{s[k]:.2f}" if s.get(k) is not None else "-" for k in ("near_tie_rate", "mismatch_rate"))
        rows.append(row)
        if s.get("mismatch_rate"):
            bugs.append(f"BUG: lossless policy {label} left ar's output at a clear margin (not a near-tie) on "
                        f"{s['mismatch_rate']:.0%} of prompts: see divergences.json")
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    ref = summary.get("reference")
    lines.append(f"(speedup and exact match against {ref}, same run)" if ref else "(no ar reference: baselines=false)")
    if precision:
        lines.append("(near-tie: left ar's output where the target's float32 top-2 gap is within the dtype's rounding; "
                     "see specpolicy.decoding.precision)")
    return "\n".join(lines + bugs)
