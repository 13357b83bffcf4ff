"""A YAML text validated into a config model, or a `ConfigError` that names every problem with its key
path and line: pydantic's errors turned into messages a person can act on (the allowed values, the
bounds, a close match for a misspelt key)."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from streamer.config.base import describe
from streamer.config.yamlfile import KeyPath, data_path, format_key, load_yaml
from streamer.errors import ConfigError, ConfigProblem

_M = TypeVar("_M", bound=BaseModel)


def validate(
    model: type[_M], text: str, filename: str, env: Mapping[str, str] | None, base_dir: Path | None
) -> _M:
    base = Path.cwd() if base_dir is None else Path(base_dir).absolute()
    doc = load_yaml(text, filename, os.environ if env is None else env, base_dir=base)
    try:
        config = model.model_validate(doc.data, context={"base_dir": base})
    except ValidationError as exc:
        problems = list(doc.problems)
        for error in exc.errors():
            for path, message in _problems_from(error, doc.data, model):
                # No second problem for a key that has one from the file (e.g. an undefined variable).
                if not any(_within(path, p) for p in doc.problems):
                    problems.append(ConfigProblem(format_key(path), doc.line_of(path), message))
        raise ConfigError(filename, _sorted(problems)) from None
    if doc.problems:
        raise ConfigError(filename, _sorted(doc.problems))
    return config


def _within(path: KeyPath, problem: ConfigProblem) -> bool:
    key = format_key(path)
    return key == problem.key or key.startswith((problem.key + ".", problem.key + "["))


def _sorted(problems: list[ConfigProblem]) -> list[ConfigProblem]:
    return sorted(problems, key=lambda p: (p.line or 0, p.key))


# --------------------------------------------------------------------------- pydantic errors → problems


def _problems_from(error: Any, data: Any, root: type[BaseModel]) -> list[tuple[KeyPath, str]]:
    """Turn one pydantic error into ``(key path, message)`` pairs (several for a `fail` with many)."""
    path = data_path(error["loc"], data, error["type"] == "missing")
    ctx = error.get("ctx") or {}
    if error["type"] == "yolostream":
        return [((*path, *sub), message) for sub, message in ctx["problems"]]
    value = error.get("input")
    if error["type"] == "too_short" and isinstance(value, list) and len(value) >= ctx.get("min_length", 0):
        return []  # pydantic also counts the items that failed as missing: their own errors say enough
    return [(path, error_message(error, path, root))]


def error_message(error: Any, path: KeyPath, root: type[BaseModel]) -> str:
    kind: str = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    got = f", got {describe(value)}"
    if kind == "missing":
        return f"missing required key '{path[-1]}'" if path else "missing required key"
    if kind == "extra_forbidden":
        key = str(path[-1]) if path else "?"
        model = _model_at(root, path[:-1])
        return f"unknown key '{key}'" + (did_you_mean(key, list(model.model_fields)) if model else "")
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
        return f"must be {bounds[kind]} {limit}{got}"
    if kind == "literal_error":
        choices = [c.strip("'") for c in re.findall(r"'[^']*'", str(ctx.get("expected", "")))]
        hint = did_you_mean(value, choices) if isinstance(value, str) else ""
        return f"must be one of {', '.join(choices)}{got}{hint}"
    if kind in ("string_too_short", "too_short"):
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"must have at least {least} items{got}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long, got {len(value)}"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    expected = {
        "int": "an integer",
        "float": "a number",
        "bool": "true or false",
        "string": "a string (quote it if it looks like a number)",
        "dict": "a mapping (key: value lines)",
        "model": "a mapping (key: value lines)",
        "list": "a list",
        "tuple": "a list",
        "path": "a file path",
    }
    for prefix, what in expected.items():
        if kind.startswith(prefix + "_"):
            return f"must be {what}{got}"
    return str(error["msg"])


def did_you_mean(word: Any, choices: Any) -> str:
    matches = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def _model_at(root: type[BaseModel], path: KeyPath) -> type[BaseModel] | None:
    """The model class that validates the mapping at `path` of `root` (for suggesting known keys)."""
    model: type[BaseModel] = root
    for part in path:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        found = _find_model(field.annotation) if field else None
        if found is None:
            return None
        model = found
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _find_model(arg)
        if found is not None:
            return found
    return None
