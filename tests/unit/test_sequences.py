from __future__ import annotations

from clm_shared.sequences import Gap, find_gaps


def test_consecutive_sequences_have_no_gap_and_move_the_last_one_on() -> None:
    last: dict[str, int] = {"a": 2}
    assert find_gaps(last, [("a", 3), ("b", 1), ("b", 2), ("a", 4)]) == []
    assert last == {"a": 4, "b": 2}


def test_a_missing_sequence_is_a_gap() -> None:
    last: dict[str, int] = {"a": 2}
    assert find_gaps(last, [("a", 5), ("b", 2)]) == [Gap("a", 3, 5), Gap("b", 1, 2)]
    assert last == {"a": 5, "b": 2}


def test_an_older_sequence_changes_nothing_and_sequence_one_starts_over() -> None:
    last: dict[str, int] = {"a": 7}
    assert find_gaps(last, [("a", 4)]) == []
    assert last == {"a": 7}
    assert find_gaps(last, [("a", 1), ("a", 2)]) == []  # a profile created again after an erasure
    assert last == {"a": 2}
