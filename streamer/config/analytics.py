"""Config sections of what runs after detection: tracking (global, with per-source overrides), and each
source's zones and lines (docs/config.md#tracking, #sourceszones, #sourceslines).

Class filters are given by name or id here and resolved to ids by `streamer.config.Config`, which knows
the model's class names; the geometry is checked here (enough points, inside 0..1 when normalised).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StrictBool, StrictFloat, StrictInt, model_validator

from streamer.config.base import Section, fail
from streamer.config.yamlfile import KeyPath

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


class TrackingConfig(Section):
    """ByteTrack per stream, after NMS (streamer.tracking)."""

    enabled: StrictBool = Field(
        default=False, description="Track objects: each published detection gets a track_id."
    )
    high_score: StrictFloat = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Detections at or above this score are matched first; new tracks need this + 0.1.",
    )
    low_score: StrictFloat = Field(
        default=0.1,
        ge=0,
        le=1,
        description="Detections from this score up to high_score can only continue a track (ByteTrack's "
        "second association); lower ones are not tracked. Detections below detection.confidence never "
        "reach the tracker: lower that too for the second association to see them.",
    )
    match_iou: StrictFloat = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="Least IoU between a track's predicted box and a high-score detection to match them.",
    )
    max_lost_s: StrictFloat = Field(
        default=1.0,
        ge=0,
        description="Seconds (of stream time) a track is kept without a detection before it ends.",
    )
    min_hits: StrictInt = Field(
        default=2, ge=1, le=30, description="Frames in a row a new track must be seen before it gets an id."
    )

    @model_validator(mode="after")
    def _ordered(self) -> TrackingConfig:
        if self.low_score > self.high_score:
            fail((("low_score",), f"must be <= high_score ({self.high_score:g}), got {self.low_score:g}"))
        return self


class TrackingOverrides(Section):
    """A source's own tracking settings; a key left out takes the global ``tracking`` value."""

    enabled: StrictBool | None = Field(default=None, description="As tracking.enabled, for this source.")
    high_score: StrictFloat | None = Field(default=None, description="As tracking.high_score.")
    low_score: StrictFloat | None = Field(default=None, description="As tracking.low_score.")
    match_iou: StrictFloat | None = Field(default=None, description="As tracking.match_iou.")
    max_lost_s: StrictFloat | None = Field(default=None, description="As tracking.max_lost_s.")
    min_hits: StrictInt | None = Field(default=None, description="As tracking.min_hits.")

    def over(self, base: TrackingConfig) -> TrackingConfig:
        """`base` with this source's keys in its place (validated again, so bounds still hold)."""
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        return TrackingConfig.model_validate({**base.model_dump(), **given}) if given else base


def _class_item(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"must be a class id (an integer) or a class name, got {value!r}")
    return value


Point = tuple[StrictFloat | StrictInt, StrictFloat | StrictInt]
ClassList = tuple[Annotated[int | str, BeforeValidator(_class_item)], ...] | None


class _Shape(Section):
    name: str = Field(
        min_length=1,
        max_length=64,
        description="Unique among the source's zones and lines: letters, digits, '_' and '-' (it names "
        "the events and a metrics label).",
    )
    coords: Literal["pixels", "normalized"] = Field(
        default="pixels",
        description="pixels: points in pixels of the source frame; normalized: fractions 0..1 of its "
        "width and height.",
    )
    classes: ClassList = Field(
        default=None, description="Class names or ids that count here; None: every class."
    )
    anchor: Literal["bottom", "center"] = Field(
        default="bottom",
        description="The point of a box that must be inside or cross: the middle of its bottom edge "
        "(where a person stands) or its centre.",
    )

    def _check(self, points: tuple[Point, ...], key: str, least: int) -> None:
        problems: list[tuple[KeyPath, str]] = []
        if not _NAME.fullmatch(self.name):
            problems.append((("name",), f"use letters, digits, '_' and '-', got {self.name!r}"))
        if len(points) < least:
            problems.append(((key,), f"needs at least {least} points [x, y], got {len(points)}"))
        if self.coords == "normalized":
            problems += [
                ((key, i), f"normalized coordinates must be within 0..1, got [{x:g}, {y:g}]")
                for i, (x, y) in enumerate(points)
                if not (0 <= x <= 1 and 0 <= y <= 1)
            ]
        if problems:
            fail(*problems)


class ZoneConfig(_Shape):
    """A polygon of a source's picture: enter and exit events and occupancy per class."""

    polygon: tuple[Point, ...] = Field(description="The corners [x, y], in order (at least 3).")

    @model_validator(mode="after")
    def _valid(self) -> ZoneConfig:
        self._check(self.polygon, "polygon", 3)
        xy = self.polygon
        area = sum(xy[i][0] * xy[i - 1][1] - xy[i - 1][0] * xy[i][1] for i in range(len(xy))) / 2
        if area == 0:
            fail((("polygon",), "has no area (its corners lie on one line)"))
        return self


class LineConfig(_Shape):
    """A segment of a source's picture: crossings counted in each direction."""

    points: tuple[Point, ...] = Field(
        description="The two ends [x, y]: A then B. Looking from A to B on the picture, a crossing from "
        "the right-hand side to the left-hand side is 'in', the other way 'out'.",
    )

    @model_validator(mode="after")
    def _valid(self) -> LineConfig:
        self._check(self.points, "points", 2)
        if len(self.points) != 2:
            fail((("points",), f"a line has exactly 2 points, got {len(self.points)}"))
        if self.points[0] == self.points[1]:
            fail((("points",), "the two ends are the same point"))
        return self


__all__ = ["LineConfig", "TrackingConfig", "TrackingOverrides", "ZoneConfig"]
