"""The definition the API's documentation shows is one the API accepts."""

from __future__ import annotations

from campaigns.api import EXAMPLE
from campaigns.definitions import parse_campaign


def test_the_documented_example_is_a_valid_campaign() -> None:
    assert parse_campaign(EXAMPLE).id == "welcome"
