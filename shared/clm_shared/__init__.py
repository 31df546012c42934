"""The platform's shared library: settings, event schemas, topic names, Kafka and database plumbing."""
