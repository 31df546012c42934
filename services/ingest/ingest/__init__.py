"""Ingest: the Segment-compatible tracking API that publishes touchpoints to Kafka."""
