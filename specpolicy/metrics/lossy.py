"""The quality side of lossy policies as one table: speed beside errors per trusted / relaxed / committed token,
first error, first divergence from ar, the target's NLL delta against ar and the total-variation bound.

Reads the entries of ``summary.json`` (``metrics.summary``); figures print as ``value [95% CI]``.

Example:
    >>> print(lossy_table(json.load(open(run_dir / "summary.json"))))                    # doctest: +SKIP
    policy     tpf [95% CI]       err/trusted [95% CI]  ...
"""

from __future__ import annotations

__all__ = ["LOSSY_COLUMNS", "lossy_table"]

# (header, summary key, format, with interval)
LOSSY_COLUMNS = (
    ("tpf [95% CI]", "tpf", ".2f", True),
    ("err/trusted [95% CI]", "errors_per_trusted_token", ".3f", True),
    ("err/relaxed", "errors_per_relaxed_token", ".2f", False),
    ("err/committed [95% CI]", "errors_per_committed_token", ".3f", True),
    ("first err", "first_error", ".1f", False),
    ("first div", "first_divergence", ".1f", False),
    ("NLL delta vs ar [95% CI]", "nll_delta_vs_ar", "+.3f", True),
    ("TV bound", "lossy_tv_bound", ".3f", False),
)


def _cell(fig, fmt: str, ci: bool) -> str:
    if not fig or fig.get("value") is None:
        return "-"
    text = format(fig["value"], fmt)
    lo, hi = fig.get("ci95", [None, None])
    return text + (f" [{format(lo, fmt)},{format(hi, fmt)}]" if ci and lo is not None and hi is not None else "")


def lossy_table(summary: dict, labels=None) -> str:
    """Fixed-width table over ``labels`` (default: every policy of the summary that is not lossless), with the
    definitions underneath; empty string when there is none.

    Example:
        >>> lossy_table({"policies": {"ar": {"lossless": True}}})
        ''
    """
    pol = summary["policies"]
    labels = [k for k, v in pol.items() if not v.get("lossless", False)] if labels is None else list(labels)
    if not labels:
        return ""
    rows = [("policy", *(c[0] for c in LOSSY_COLUMNS))]
    rows += [(label, *(_cell(pol[label].get(key), fmt, ci) for _, key, fmt, ci in LOSSY_COLUMNS)) for label in labels]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("(err/*: shadow rejects per trusted / relaxed / committed token, judged against the committed prefix; "
                 "first err/div: mean index of the first wrong token / the first token that differs from ar; NLL delta: "
                 "target NLL per token minus ar's on the same prompts, nats; TV bound: upper bound on the mean per-token "
                 "total-variation distance from p)")
    return "\n".join(lines)
