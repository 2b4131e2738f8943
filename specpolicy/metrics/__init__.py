"""Metrics: model quality as a drafter, run summaries (speed, quality) with bootstrap intervals."""
