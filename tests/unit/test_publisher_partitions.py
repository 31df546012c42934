from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from clm_shared.kafka.producer import _partition


@given(st.binary(min_size=0, max_size=40), st.integers(1, 24))
def test_a_keyed_record_goes_where_aiokafkas_default_partitioner_sends_it(key: bytes, count: int) -> None:
    partitions = list(range(count))
    assert _partition(key, partitions) == DefaultPartitioner()(key, partitions, partitions)
    assert _partition(key, partitions) == _partition(key, partitions)  # the cached hash


def test_a_record_without_a_key_goes_to_any_partition() -> None:
    assert {_partition(None, [0, 1, 2]) for _ in range(200)} == {0, 1, 2}
