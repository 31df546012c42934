"""Campaigns: lifecycle journeys, email and webhooks."""
