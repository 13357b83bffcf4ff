"""What every config section shares: the frozen, extra-forbidding base model; `fail`, the way a
validator reports problems at keys below the value it validates (so that each keeps its YAML line);
`resolved`, a path read against the config file's folder; `describe`, a YAML value in a message."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn, overload

from pydantic import BaseModel, ConfigDict, ValidationInfo
from pydantic_core import PydanticCustomError

from streamer.config.urls import redact_url
from streamer.config.yamlfile import KeyPath


def fail(*problems: tuple[KeyPath, str]) -> NoReturn:
    """Raise from a validator with problems at paths *below* the validated value, so each keeps its line.

    Pydantic puts an error raised in a validator at the validated value itself; the paths carried in the
    error's context are appended to that location by `streamer.config.validate`.
    """
    summary = "; ".join(message for _, message in problems)
    raise PydanticCustomError("yolostream", "{summary}", {"summary": summary, "problems": list(problems)})


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@overload
def resolved(path: Path, info: ValidationInfo) -> Path: ...
@overload
def resolved(path: None, info: ValidationInfo) -> None: ...
def resolved(path: Path | None, info: ValidationInfo) -> Path | None:
    """`path` read against the config file's folder when it is relative (absolute, and None, as they are)."""
    if path is None or path.is_absolute():
        return path
    context = info.context or {}
    base = context.get("base_dir")
    return (base if isinstance(base, Path) else Path.cwd()) / path


def describe(value: Any) -> str:
    """A short description of a YAML value for messages: ``'four'``, ``true``, ``a list``, ``nothing``."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):  # any string may be a camera URL under the wrong key
        value = redact_url(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
