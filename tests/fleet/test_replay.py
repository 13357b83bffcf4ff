"""`yolostream subscribe --since`: what it accepts and what it refuses."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from streamer.fleet.replay import parse_since

NOW = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, None),
        ("all", "all"),
        ("90s", NOW - timedelta(seconds=90)),
        ("10m", NOW - timedelta(minutes=10)),
        ("1.5h", NOW - timedelta(minutes=90)),
        ("2d", NOW - timedelta(days=2)),
        ("2026-12-03T09:00:00Z", datetime(2026, 12, 3, 9, tzinfo=timezone.utc)),
        ("2026-12-03T09:00:00", datetime(2026, 12, 3, 9, tzinfo=timezone.utc)),
        ("2026-12-03T10:00:00+01:00", datetime(2026, 12, 3, 9, tzinfo=timezone.utc)),
    ],
)
def test_since_is_all_a_duration_back_or_a_time(text: str | None, expected: object) -> None:
    assert parse_since(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "10 minutes", "-5m", "12"])
def test_a_since_it_cannot_read_says_what_it_expects(text: str) -> None:
    with pytest.raises(ValueError, match="'all', a duration"):
        parse_since(text, NOW)
