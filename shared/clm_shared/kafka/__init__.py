"""Kafka plumbing on aiokafka: admin, an acknowledged producer and a committing consumer loop."""
