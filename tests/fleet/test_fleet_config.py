"""The `fleet` section: validated like the rest (key and line in every error), secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamer.config import parse_config
from streamer.errors import ConfigError

BASE = "model:\n  onnx: m.onnx\n"


def _problems(text: str) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "f.yaml")
    return [(p.key, p.line, p.message) for p in err.value.problems]


def test_a_fleet_daemon_needs_no_sources_and_its_password_comes_from_a_file_and_is_never_shown(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "nats.pass"
    secret.write_text("s3cr3t-Pw\n")
    text = BASE + (
        "fleet:\n  nats: [nats://a:4222, tls://b:4222]\n  name: plant-a\n  user: ys\n"
        f"  password: ${{file:{secret}}}\n  lease_s: 3\n"
    )
    cfg = parse_config(text, "f.yaml", base_dir=tmp_path)
    assert cfg.sources == () and cfg.fleet is not None
    assert cfg.fleet.password is not None and cfg.fleet.password.get_secret_value() == "s3cr3t-Pw"
    assert (cfg.fleet.lease_s, cfg.fleet.capacity, cfg.fleet.replicas) == (3.0, 32, 3)
    for shown in (repr(cfg), str(cfg), repr(cfg.fleet), cfg.fleet.model_dump_json()):
        assert "s3cr3t" not in shown


@pytest.mark.parametrize(
    ("fleet", "key", "line", "message"),
    [
        ("  nats: [http://a:4222]\n  name: x\n", "fleet.nats[0]", 4, "must be a URL like nats://host:4222"),
        ("  nats: []\n  name: x\n", "fleet.nats", 4, "must not be empty"),
        ("  nats: [nats://a]\n  name: plant a\n", "fleet.name", 5, "contain only letters, digits"),
        ("  nats: [nats://a]\n", "fleet.name", 3, "missing required key 'name'"),
        ("  nats: [nats://a]\n  name: x\n  token: t\n  user: u\n  password: p\n", "fleet.token", 6,
         "give a token or user/password, not both"),
        ("  nats: [nats://a]\n  name: x\n  user: u\n", "fleet.password", 3, "user and password go together"),
        ("  nats: [nats://a]\n  name: x\n  lease_s: 0.5\n", "fleet.lease_s", 6, "must be >= 1"),
        ("  nats: [nats://a]\n  name: x\n  tls:\n    cert_file: c.pem\n", "fleet.tls.key_file", 6,
         "cert_file and key_file go together"),
        ("  nats: [nats://a]\n  name: x\n  leases: 3\n", "fleet.leases", 6, "unknown key 'leases'"),
    ],
)  # fmt: skip
def test_fleet_errors_name_the_key_and_line(fleet: str, key: str, line: int, message: str) -> None:
    problems = _problems(BASE + "fleet:\n" + fleet)
    assert any(k == key and ln == line and message in m for k, ln, m in problems), problems


def test_without_fleet_sources_are_still_required() -> None:
    problems = _problems(BASE)
    assert problems[0][0] == "sources" and "missing required key 'sources'" in problems[0][2]
    assert "must not be empty" in _problems(BASE + "sources: []\n")[0][2]


def test_the_schema_lets_a_fleet_config_leave_sources_out() -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="the schema tests need jsonschema (test extra)")
    from streamer.config import json_schema

    validator = jsonschema.Draft202012Validator(json_schema())
    fleet = {"model": {"onnx": "m.onnx"}, "fleet": {"nats": ["nats://a:4222"], "name": "x"}}
    assert list(validator.iter_errors(fleet)) == []
    assert list(validator.iter_errors({"model": {"onnx": "m.onnx"}}))
