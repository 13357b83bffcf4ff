"""docs/config.md and the JSON Schema (`yolostream schema`) against the config models: every key that the
loader accepts is documented in its section's table, none that it refuses is, and the schema an editor uses
accepts the shipped configs and refuses what `check` refuses."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from streamer.config import Config, json_schema

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "config.md"


def _sections(model: type[BaseModel], path: str) -> dict[str, set[str]]:
    """``{"engine": {"backend", ...}, "sources[].reconnect": {...}, ...}`` from the models' fields."""
    found = {path: set(model.model_fields)} if path else {}
    for name, field in model.model_fields.items():
        union = typing.get_origin(field.annotation) in (typing.Union, types.UnionType)
        for arg in typing.get_args(field.annotation) if union else (field.annotation,):
            many = typing.get_origin(arg) is tuple
            inner = typing.get_args(arg)[0] if many else arg
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                sub = f"{path}.{name}" if path else name
                found |= _sections(inner, f"{sub}[]" if many else sub)
    return found


def _documented() -> dict[str, set[str]]:
    """Each ``## `section` `` / ``### `section` `` heading of docs/config.md → the keys of its tables."""
    found: dict[str, set[str]] = {}
    section = None
    for line in DOC.read_text().splitlines():
        if m := re.match(r"#{2,3} `([^`]+)`\s*$", line):
            section = m.group(1).removesuffix("[]")
            found.setdefault(section, set())
        elif line.startswith("#"):
            section = None
        elif section and (m := re.match(r"\| `([a-z_0-9]+)` \|", line)):
            found[section].add(m.group(1))
    return found


def test_every_config_key_is_documented_in_its_section_and_none_is_stale() -> None:
    wanted = {k.removesuffix("[]"): v for k, v in _sections(Config, "").items()}
    documented = _documented()
    problems = []
    for section, keys in sorted(wanted.items()):
        have = documented.get(section)
        if have is None:
            problems.append(f"docs/config.md has no section `{section}`")
            continue
        problems += [f"`{section}.{k}` is not documented" for k in sorted(keys - have)]
        problems += [
            f"`{section}.{k}` is documented but the config has no such key" for k in sorted(have - keys)
        ]
    problems += [
        f"docs/config.md documents a section `{s}` the config lacks" for s in documented.keys() - wanted
    ]
    assert not problems, "\n".join(problems)


def test_the_top_level_sections_are_the_documented_ones() -> None:
    assert set(Config.model_fields) <= set(_documented())


@pytest.fixture(scope="module")
def validator():
    jsonschema = pytest.importorskip("jsonschema", reason="the schema tests need jsonschema (test extra)")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("name", ["example.yaml", "demo.yaml"])
def test_the_schema_accepts_the_shipped_configs(validator, name: str) -> None:
    doc = yaml.safe_load((REPO / "config" / name).read_text())
    assert [e.message for e in validator.iter_errors(doc)] == []


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"engine": {"max_batch": "four"}}, ["engine", "max_batch"]),
        ({"engine": {"backend": "openvino"}}, ["engine", "backend"]),
        ({"engine": {"max_bacth": 4}}, ["engine"]),  # a misspelt key
        ({"detection": {"confidence": 2}}, ["detection", "confidence"]),
        ({"sources": []}, ["sources"]),
    ],
)
def test_the_schema_refuses_what_check_refuses(validator, patch: dict, where: list[str]) -> None:
    doc = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    for key, value in patch.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    errors = list(validator.iter_errors(doc))
    assert errors and any(list(e.absolute_path)[: len(where)] == where for e in errors), errors


def test_yolostream_schema_prints_it_and_writes_it(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streamer", "schema"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    schema = json.loads(out.stdout)
    assert schema["$schema"].endswith("2020-12/schema") and "engine" in schema["properties"]
    target = tmp_path / "yolostream.schema.json"
    subprocess.run([sys.executable, "-m", "streamer", "schema", "-o", str(target)], check=True, timeout=120)
    assert json.loads(target.read_text()) == schema
