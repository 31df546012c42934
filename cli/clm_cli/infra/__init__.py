"""Native Kafka and PostgreSQL for machines without a Docker engine: installed, started and stopped here."""
