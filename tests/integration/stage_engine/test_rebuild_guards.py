"""Rebuild refuses to run under a live engine; erased ids are kept only as keyed hashes."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from clm_shared.db import create_engine, service_schema
from clm_shared.settings import Settings
from clm_shared.topics import Topics
from stage_engine.erasure import erased_id_hash
from stage_engine.rebuild import RebuildRefused, rebuild
from tests.integration.stage_engine.test_recovery import _is, publish, running_engine
from tests.integration.stage_engine.test_stage_engine import T0
from tests.secret_watch import remember_secret
from tests.utils.clock import FakeClock
from tests.utils.engine_state import processed_count, snapshot
from tests.utils.factories import touchpoint
from tests.waiting import wait_for


async def test_rebuild_is_refused_while_an_engine_of_the_group_runs(settings: Settings, topics: Topics) -> None:
    await publish(settings, topics, [touchpoint("Signed Up", customer="r1"), touchpoint("Signed Up", customer="r2")])
    clock = FakeClock(T0)
    async with running_engine(settings, clock):
        await wait_for(lambda: _is(processed_count(settings), 2), what="both applied")
        with pytest.raises(RebuildRefused, match=r"consumer\(s\) are running .* stop the stage engine"):
            await rebuild(settings, clock=clock)
        assert set((await snapshot(settings))["customers"]) == {"r1", "r2"}  # nothing was truncated
    report = await rebuild(settings, clock=clock)  # the engine left the group when it stopped
    assert report.customers == 2


async def test_erased_ids_from_before_keyed_hashes_are_rekeyed_and_still_skipped(
    settings: Settings, topics: Topics
) -> None:
    settings = settings.model_copy(update={"erasure_key": SecretStr(remember_secret("test-erasure-key"))})
    gone = "gone@example.com"
    await publish(
        settings,
        topics,
        [touchpoint("Signed Up", customer="keep", at=T0), touchpoint("Signed Up", customer=gone, at=T0)],
    )
    clock = FakeClock(T0)
    async with running_engine(settings, clock):
        await wait_for(lambda: _is(processed_count(settings), 2), what="both applied")
    # What an older version left: a plain SHA-256 of the erased id.
    legacy = hashlib.sha256(gone.encode()).hexdigest()
    engine = create_engine(settings.database_url, schema=service_schema(settings, "stage-engine"), pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO erased_ids (id_hash, erased_at, keyed) VALUES (:h, :at, false)"),
                {"h": legacy, "at": T0 + timedelta(days=1)},
            )
        report = await rebuild(settings, clock=clock)
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT id_hash, keyed FROM erased_ids"))).all()
    finally:
        await engine.dispose()
    assert report.erased_skipped == 1
    assert set((await snapshot(settings))["customers"]) == {"keep"}
    assert stored == [(erased_id_hash(gone, b"test-erasure-key"), True)]
    assert legacy not in {row[0] for row in stored}


def test_the_erased_id_hash_depends_on_the_key_and_is_not_a_plain_digest() -> None:
    plain = hashlib.sha256(b"gone@example.com").hexdigest()
    first, second = erased_id_hash("gone@example.com", b"k1"), erased_id_hash("gone@example.com", b"k2")
    assert len({plain, first, second}) == 3
    assert erased_id_hash("gone@example.com", b"k1") == first
