"""Touchpoints onto ``clm.touchpoints.v1``, keyed by customer so one customer's events keep their order."""

from __future__ import annotations

from collections.abc import Sequence

from clm_shared.kafka.producer import OutgoingRecord, Publisher
from clm_shared.schemas.touchpoint import Touchpoint
from clm_shared.serde import JsonSerializer

_serialize = JsonSerializer()


class TouchpointPublisher:
    def __init__(self, publisher: Publisher, topic: str) -> None:
        self._publisher = publisher
        self._topic = topic

    async def publish(self, touchpoints: Sequence[Touchpoint]) -> None:
        """Returns once the broker acknowledged every touchpoint; raises PublishUnavailable otherwise."""
        await self._publisher.publish_many(
            [OutgoingRecord(self._topic, _serialize(tp), key=tp.customer_key.encode()) for tp in touchpoints]
        )
