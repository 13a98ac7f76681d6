"""Probes on cached features: classifiers, splits (data.splits), metrics with bootstrap CIs. Never imports
torch."""
