"""Metrics: the lifecycle metrics of every stage, their API and dashboard."""
