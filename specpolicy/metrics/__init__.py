"""Metrics: model quality as a drafter, run summaries (speed, quality) with bootstrap intervals, the lossy table."""

from .lossy import LOSSY_COLUMNS, lossy_table
from .summary import acceptance_counts, bootstrap_ci, first_divergence, summarise_policy, summarise_run

__all__ = ["LOSSY_COLUMNS", "lossy_table", "acceptance_counts", "bootstrap_ci", "first_divergence", "summarise_policy", "summarise_run"]
