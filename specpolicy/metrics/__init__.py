"""Metrics: model quality as a drafter, run summaries (speed, quality) with bootstrap intervals."""

from .summary import acceptance_counts, bootstrap_ci, first_divergence, summarise_policy, summarise_run

__all__ = ["acceptance_counts", "bootstrap_ci", "first_divergence", "summarise_policy", "summarise_run"]
