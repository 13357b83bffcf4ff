"""What every config section shares: the frozen, extra-forbidding base model, and `fail`, the way a
validator reports problems at keys below the value it validates (so that each keeps its YAML line)."""

from __future__ import annotations

from typing import NoReturn

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

from streamer.yamlfile import KeyPath


def fail(*problems: tuple[KeyPath, str]) -> NoReturn:
    """Raise from a validator with problems at paths *below* the validated value, so each keeps its line.

    Pydantic puts an error raised in a validator at the validated value itself; the paths carried in the
    error's context are appended to that location by `streamer.config._problems_from`.
    """
    summary = "; ".join(message for _, message in problems)
    raise PydanticCustomError("yolostream", "{summary}", {"summary": summary, "problems": list(problems)})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
