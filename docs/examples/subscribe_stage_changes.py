"""Print every stage change on clm.stage-changes.v1: customer, from -> to stage."""

import asyncio
import json
import os

from aiokafka import AIOKafkaConsumer

BOOTSTRAP = os.environ.get("CLM_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
TOPIC = os.environ.get("CLM_TOPIC_NAMESPACE", "") + "clm.stage-changes.v1"
MAX_EVENTS = int(os.environ.get("MAX_EVENTS", "0"))  # stop after this many events; 0: never


async def main() -> None:
    consumer = AIOKafkaConsumer(
        TOPIC, bootstrap_servers=BOOTSTRAP, group_id="my-team-stage-watcher", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        seen = 0
        async for record in consumer:
            event = json.loads(record.value)  # a CloudEvent: id, type, subject, time, sequence, data
            if event["type"] == "clm.stage.changed":
                data = event["data"]
                print(f"{data['customer_id']}: {data['from_stage'] or '(new)'} -> {data['to_stage']}", flush=True)
            seen += 1
            if seen == MAX_EVENTS:
                break
    finally:
        await consumer.stop()


if __name__ == "__main__":
    asyncio.run(main())
