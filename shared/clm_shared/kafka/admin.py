"""Topic creation and broker reachability checks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError


def min_insync_replicas(replicas: int) -> int:
    """With three copies or more, a write is acknowledged once two have it: one broker may fail without loss."""
    return 2 if replicas >= 3 else 1


async def ensure_topics(
    bootstrap: str, partitions: Mapping[str, int], *, replication_factor: int = 1, timeout_s: float = 30.0
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are.

    Replicated topics get ``min.insync.replicas`` themselves rather than trusting the brokers' default,
    so acks=all means two copies on a managed cluster too.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        existing = set(await admin.list_topics())
        configs = (
            {"min.insync.replicas": str(min_insync_replicas(replication_factor))} if replication_factor >= 3 else {}
        )
        wanted = [
            NewTopic(name, num_partitions=count, replication_factor=replication_factor, topic_configs=configs)
            for name, count in partitions.items()
            if name not in existing
        ]
        if not wanted:
            return
        # Another process may create them in between: that is what we wanted anyway.
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics(wanted)
        await _wait_for_leaders(admin, [t.name for t in wanted], timeout_s)
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: list[str], timeout_s: float) -> None:
    """A new topic accepts writes only once every partition has a leader."""
    deadline = time.monotonic() + timeout_s
    while True:
        described = await admin.describe_topics(names)
        ready = all(
            topic.get("error_code", 0) == 0
            and topic.get("partitions")
            and all(p.get("leader", -1) >= 0 for p in topic["partitions"])
            for topic in described
        )
        if ready:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {names} have no leader after {timeout_s}s")
        await asyncio.sleep(0.1)


async def broker_reachable(bootstrap: str, timeout_s: float = 3.0) -> bool:
    """True when the cluster answers a metadata request within the timeout."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.list_topics(), timeout_s)
        return True
    except (KafkaError, OSError, TimeoutError):
        return False
    finally:
        await admin.close()


async def cluster_brokers(bootstrap: str, timeout_s: float = 5.0) -> list[int]:
    """Node ids of the brokers the cluster's metadata lists (empty when it does not answer)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        described = await asyncio.wait_for(admin.describe_cluster(), timeout_s)
        return sorted(int(broker["node_id"]) for broker in described["brokers"])
    except (KafkaError, OSError, TimeoutError):
        return []
    finally:
        await admin.close()


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    """The partition numbers of a topic (empty when it does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return sorted(p["partition"] for t in described if t.get("error_code", 0) == 0 for p in t["partitions"])


async def group_members(bootstrap: str, group_id: str, timeout_s: float = 10.0) -> list[str]:
    """Client ids of the live members of a consumer group (empty when nobody consumes as that group)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    await asyncio.wait_for(admin.start(), timeout_s)
    try:
        described = await asyncio.wait_for(admin.describe_consumer_groups([group_id]), timeout_s)
    finally:
        await admin.close()
    return [
        member["client_id"]
        for response in described
        for group in response.to_object()["groups"]
        if group["group"] == group_id
        for member in group["members"]
    ]
