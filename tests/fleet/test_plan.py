"""Rebalance plans (streamer.fleet.plan): fair targets within capacities, few moves, the same every time."""

from __future__ import annotations

import pytest

from streamer.fleet.plan import Move, Plan, fair_targets, moves, shed


@pytest.mark.parametrize(
    ("total", "capacity", "held", "expected"),
    [
        (9, {"a": 32, "b": 32}, {"a": 9}, {"a": 5, "b": 4}),  # the extra one stays where it is
        (9, {"a": 32, "b": 32}, {"b": 9}, {"a": 4, "b": 5}),
        (10, {"a": 32, "b": 32, "c": 32}, {"a": 5, "b": 5}, {"a": 4, "b": 3, "c": 3}),  # ties: by run id
        (10, {"a": 2, "b": 32}, {"b": 10}, {"a": 2, "b": 8}),  # a capacity caps its share
        (100, {"a": 2, "b": 3}, {}, {"a": 2, "b": 3}),  # not enough room: fewer in all
        (7, {"a": 0, "b": 3, "c": 10}, {"c": 7}, {"a": 0, "b": 3, "c": 4}),
        (0, {"a": 4}, {}, {"a": 0}),
    ],
)
def test_targets_share_evenly_within_capacities_and_keep_the_extra_where_it_is(
    total: int, capacity: dict[str, int], held: dict[str, int], expected: dict[str, int]
) -> None:
    assert fair_targets(total, capacity, held) == expected


def test_a_member_over_its_target_sheds_its_highest_sorted_cameras() -> None:
    assert shed(["c10", "c2", "c1", "c3"], 2) == ["c2", "c3"]
    assert shed(["a", "b"], 5) == []


def test_moves_say_which_camera_goes_from_whom_to_whom() -> None:
    holdings = {"a": ["c0", "c1", "c2", "c3"], "b": [], "c": []}
    targets = fair_targets(6, {"a": 9, "b": 9, "c": 9}, {"a": 4})
    assert targets == {"a": 2, "b": 2, "c": 2}
    # the two free cameras are b's to claim; a's excess goes to c
    assert moves(holdings, targets, free=2) == [Move("c2", "a", "c"), Move("c3", "a", "c")]
    assert moves({"a": ["c0"], "b": ["c1"]}, {"a": 1, "b": 1}) == []  # balanced
    assert moves({"a": ["c0", "c1"]}, {"a": 1}) == [Move("c1", "a", None)]  # nobody has room


def test_a_plan_reads_back_and_anything_else_is_refused() -> None:
    plan = Plan({"d0-abc": 5, "d1-def": 4}, 1.5, "host pid 1")
    assert Plan.decode(plan.encode()) == plan
    for bad in (b"", b"[]", b'{"targets": 3}', b'{"targets": {"a": "x"}}'):
        with pytest.raises(ValueError, match="not a rebalance plan"):
            Plan.decode(bad)
