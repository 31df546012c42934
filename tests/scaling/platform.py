"""Two instances of every consumer service on a 3-broker Kafka cluster of the test's own, and what they leave.

The cluster is the launcher's (``KafkaCluster``): three combined KRaft nodes with small heaps, topics
replicated 3 times with ``min.insync.replicas`` 2. PostgreSQL is the session's, under a namespace of
this run. Every service instance is a real process (``tests.utils.live_platform``) on a port of its
own, in the same consumer groups as its twin; one mail sink takes both campaigns instances' mail.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from clm_cli.infra.kafka import KafkaCluster
from clm_cli.infra.process import free_ports
from clm_shared.settings import Settings
from tests.infra import ROOT, _scratch_dir
from tests.utils.live_platform import SERVICES, LivePlatform

PARTITIONS = 6
REPLICAS = 3
# instance name -> module: ingest once, each consumer service twice
INSTANCES = {"ingest": "ingest"} | {
    f"{name}-{n}": module for name, module in SERVICES.items() if name != "ingest" for n in (1, 2)
}


@contextmanager
def kafka_cluster() -> Iterator[KafkaCluster]:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # refused connections while nodes start or die
    scratch = _scratch_dir("cluster")
    cluster = KafkaCluster(cache_dir=ROOT / ".cache", data_dir=scratch, port=free_ports(6), brokers=3, heap_mb=320)
    cluster.install()
    cluster.start()
    try:
        cluster.wait_ready(timeout_s=180)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)


class ScaledPlatform(LivePlatform):
    """ingest ×1 and stage-engine, metrics, campaigns ×2 each, in one namespace on the cluster."""

    def __init__(self, cluster: KafkaCluster, settings: Settings, scratch: Path) -> None:
        super().__init__(settings, scratch, INSTANCES, label="scaling")
        self.cluster = cluster


async def group_assignments(bootstrap: str, group: str) -> list[set[tuple[str, int]]]:
    """The partitions each live member of a consumer group holds (one set per member)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members = []
    for response in described:
        for g in response.to_object()["groups"]:
            if g["group"] != group or g["state"] != "Stable":
                continue
            for member in g["members"]:
                raw = member["member_assignment"]
                assignment = ConsumerProtocolMemberAssignment.decode(raw).assignment if raw else []
                members.append({(topic, p) for topic, partitions in assignment for p in partitions})
    return members


async def topic_settings(bootstrap: str, topics: list[str]) -> dict[str, tuple[int, int, str]]:
    """Per topic: partitions, replicas of each partition (the least), and its ``min.insync.replicas``."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        await admin.close()
    min_isr = {
        resource["resource_name"]: entry["config_value"]
        for response in configs
        for resource in response.to_object()["resources"]
        for entry in resource["config_entries"]
        if entry["config_names"] == "min.insync.replicas"
    }
    settings: dict[str, tuple[int, int, str]] = {}
    for t in described:
        replicas = min((len(p["replicas"]) for p in t["partitions"]), default=0)
        settings[t["topic"]] = (len(t["partitions"]), replicas, min_isr.get(t["topic"], "?"))
    return settings


async def partition_leaders(bootstrap: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    return {p["partition"]: p["leader"] for t in described for p in t["partitions"]}


async def fully_replicated(bootstrap: str, topics: list[str]) -> bool:
    """Every partition's in-sync replica set holds all of its replicas again."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return all(set(p["isr"]) == set(p["replicas"]) for t in described for p in t["partitions"])
