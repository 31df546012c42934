"""Event schemas shared by every service (pydantic v2)."""
