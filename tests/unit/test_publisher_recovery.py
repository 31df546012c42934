"""A producer whose idempotence state broke (as after a broker restart) is replaced; a slow broker is waited out."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaError, OutOfOrderSequenceNumber, RequestTimedOutError

from clm_shared.kafka import producer as producer_module
from clm_shared.kafka.producer import OutgoingRecord, Publisher, PublishUnavailable


class FakeProducer:
    """Fails every send of the first one made with ``error``; later ones acknowledge."""

    made: list[FakeProducer]
    error: KafkaError

    def __init__(self, **_: Any) -> None:
        self.failing = not self.made
        self.stopped = False
        self.made.append(self)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.failing:
            future.set_exception(self.error)
        else:
            future.set_result(None)
        return future


@pytest.mark.parametrize(("error", "replaced"), [(OutOfOrderSequenceNumber(), True), (RequestTimedOutError(), False)])
async def test_only_a_producer_out_of_step_with_the_broker_is_replaced(
    monkeypatch: pytest.MonkeyPatch, error: KafkaError, replaced: bool
) -> None:
    class Fake(FakeProducer):
        pass

    fake, fake.made, fake.error = Fake, [], error
    monkeypatch.setattr(producer_module, "AIOKafkaProducer", fake)
    publisher = Publisher("127.0.0.1:9092", client_id="test")
    record = OutgoingRecord("topic", b"value", key=b"key")

    with pytest.raises(PublishUnavailable):
        await publisher.publish(record)
    assert fake.made[0].stopped is replaced

    if replaced:  # the next publish starts a new producer (a new producer id), which is acknowledged
        await publisher.publish(record)
        assert len(fake.made) == 2
    else:  # a broker that is merely slow keeps its producer: nothing is started anew
        with pytest.raises(PublishUnavailable):
            await publisher.publish(record)
        assert len(fake.made) == 1
    await publisher.stop()
