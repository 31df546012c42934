"""`clm simulate`: a seeded model of a shop's traffic (pure) and a paced sender to the ingest API."""
