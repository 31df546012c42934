"""Touchpoints onto ``clm.touchpoints.v1``, keyed by customer so one customer's events keep their order."""

from __future__ import annotations

from collections.abc import Sequence

from clm_shared.kafka.producer import Publisher
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import JsonSerializer

_serialize = JsonSerializer()


def encode(touchpoints: Sequence[Touchpoint]) -> list[tuple[bytes, bytes]]:
    """(key, value) records of touchpoint models; the fast path writes the same bytes without them."""
    return [(tp.customer_key.encode(), _serialize(tp)) for tp in touchpoints]


class TouchpointPublisher:
    def __init__(self, publisher: Publisher, topic: str) -> None:
        self._publisher = publisher
        self._topic = topic

    async def publish(self, touchpoints: Sequence[Touchpoint]) -> None:
        """Returns once the broker acknowledged every touchpoint; raises PublishUnavailable otherwise."""
        await self.publish_encoded(encode(touchpoints))

    async def publish_encoded(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """The same for records already encoded as (key, touchpoint JSON)."""
        await self._publisher.publish_keyed(self._topic, records)
