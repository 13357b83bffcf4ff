"""Secrets in the config: `${file:PATH}` interpolation (with the key and line of every problem), and the
`publish.curve` section (paths resolved, no I/O while validating, who is admitted)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from streamer.config import Config, load_config, parse_config
from streamer.errors import ConfigError

MINIMAL = """\
model:
  onnx: yolov7.onnx
sources:
  - id: cam1
    url: rtsp://cam/stream
"""


def parse(text: str, base_dir: Path, env: dict[str, str] | None = None) -> Config:
    return parse_config(textwrap.dedent(text), "test.yaml", env=env or {}, base_dir=base_dir)


def problems_of(text: str, base_dir: Path) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as info:
        parse(text, base_dir)
    return [(p.key, p.line, p.message) for p in info.value.problems]


# ----------------------------------------------------------------------------------------- ${file:...}


def test_secret_from_a_file_without_its_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "cam.pw").write_text("p@ss:w/rd\n")
    secret = tmp_path / "abs.pw"
    secret.write_text("two\nlines\r\n\n")
    cfg = parse(
        MINIMAL.replace("rtsp://cam/stream", "rtsp://viewer:${file:cam.pw}@cam/stream")
        + f"  - id: cam2\n    url: rtsp://u:${{file:{secret}}}@cam2/s\n",
        tmp_path,
    )
    assert cfg.sources[0].url == "rtsp://viewer:p@ss:w/rd@cam/stream"
    assert cfg.sources[1].url == "rtsp://u:two\nlines@cam2/s"  # only the trailing newlines go
    assert "p@ss" not in cfg.sources[0].display_url


def test_relative_to_the_config_files_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "etc"
    (conf / "secrets").mkdir(parents=True)
    (conf / "secrets" / "pw").write_text("hunter2")
    (conf / "config.yaml").write_text(
        MINIMAL.replace("rtsp://cam/stream", "rtsp://admin:${file:secrets/pw}@cam/stream")
    )
    monkeypatch.chdir(tmp_path)  # not the config's directory
    assert load_config("etc/config.yaml", env={}).sources[0].url == "rtsp://admin:hunter2@cam/stream"


def test_mixed_with_environment_variables_and_retyped_like_them(tmp_path: Path) -> None:
    (tmp_path / "fps").write_text("12.5\n")
    (tmp_path / "pw").write_text("s3cret\n")
    text = MINIMAL.replace("rtsp://cam/stream", "rtsp://${USER}:${file:pw}@cam/stream")
    cfg = parse(text + "    fps_limit: ${file:fps}\n", tmp_path, env={"USER": "viewer"})
    assert cfg.sources[0].url == "rtsp://viewer:s3cret@cam/stream"
    assert cfg.sources[0].fps_limit == 12.5  # a plain `${file:...}` alone is read as YAML, as `${VAR}` is


def test_escaped_reference_stays_literal(tmp_path: Path) -> None:
    cfg = parse(MINIMAL.replace("rtsp://cam/stream", "rtsp://cam/$${file:x}"), tmp_path)
    assert cfg.sources[0].url == "rtsp://cam/${file:x}"


def test_unreadable_secret_files_are_problems_with_key_line_and_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "big").write_bytes(b"x" * (64 * 1024 + 1))
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "dir").mkdir()
    text = MINIMAL.replace("rtsp://cam/stream", "rtsp://u:${file:missing}@cam/stream")
    for i, name in enumerate(["empty", "big", "binary", "dir", ""], start=2):
        text += f"  - id: cam{i}\n    url: rtsp://u:${{file:{name}}}@cam/stream\n"
    problems = problems_of(text, tmp_path)
    cannot = "cannot read the secret file"
    assert problems == [
        (
            "sources[0].url",
            5,
            f"{cannot} {tmp_path / 'missing'} (${{file:missing}}): No such file or directory",
        ),
        ("sources[1].url", 7, f"the secret file {tmp_path / 'empty'} is empty"),
        (
            "sources[2].url",
            9,
            f"the secret file {tmp_path / 'big'} is larger than 64 KiB: ${{file:...}} reads one value, "
            "such as a password",
        ),
        ("sources[3].url", 11, f"the secret file {tmp_path / 'binary'} is not UTF-8 text"),
        ("sources[4].url", 13, f"the secret file {tmp_path / 'dir'} (${{file:dir}}) is not a regular file"),
        ("sources[5].url", 15, "${file:} names no file: use ${file:/path/to/secret}"),
    ]


def test_secret_file_contents_never_in_messages(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("TopSecret99\n")
    text = MINIMAL.replace("rtsp://cam/stream", "ftp://u:${file:pw}@cam/x")
    with pytest.raises(ConfigError) as info:
        parse(text, tmp_path)
    assert "TopSecret99" not in str(info.value)
    assert "unsupported URL scheme" in str(info.value)


def test_bad_reference_mentions_file_syntax(tmp_path: Path) -> None:
    problems = problems_of(MINIMAL.replace("rtsp://cam/stream", "rtsp://cam/${fil:x}"), tmp_path)
    assert problems == [
        (
            "sources[0].url",
            5,
            "bad variable reference '${fil:x}': use ${NAME}, ${NAME:-default} or ${file:PATH}",
        )
    ]


# ---------------------------------------------------------------------------------------- publish.curve


def test_curve_section_paths_resolved_without_reading_them(tmp_path: Path) -> None:
    text = MINIMAL + (
        "publish:\n"
        "  endpoint: tcp://0.0.0.0:5555\n"
        "  curve:\n"
        "    server_secret_key_file: keys/server.key_secret\n"
        "    authorized_clients: keys/authorized_clients\n"
    )
    curve = parse(text, tmp_path).publish.curve  # none of these files exists: validation does no I/O
    assert curve is not None
    assert curve.server_secret_key_file == tmp_path / "keys" / "server.key_secret"
    assert curve.authorized_clients == (tmp_path / "keys" / "authorized_clients",)
    assert curve.allow_any_client is False
    text = MINIMAL + (
        "publish:\n"
        "  curve:\n"
        "    server_secret_key_file: /etc/yolostream/server.key_secret\n"
        "    authorized_clients: [/etc/yolostream/clients, extra/alice.key]\n"
    )
    curve = parse(text, tmp_path).publish.curve
    assert curve is not None
    assert curve.authorized_clients == (Path("/etc/yolostream/clients"), tmp_path / "extra" / "alice.key")
    text = MINIMAL + "publish:\n  curve:\n    server_secret_key_file: s\n    allow_any_client: true\n"
    curve = parse(text, tmp_path).publish.curve
    assert curve is not None and curve.authorized_clients == ()
    assert parse(MINIMAL + "publish:\n  curve:\n", tmp_path).publish.curve is None


def test_curve_section_mistakes(tmp_path: Path) -> None:
    base = MINIMAL + "publish:\n  curve:\n"
    assert problems_of(base + "    server_secret_key_file: s\n", tmp_path) == [
        (
            "publish.curve.authorized_clients",
            7,
            "missing: the directory (or files) of the subscribers' public keys, or set "
            "allow_any_client: true to admit any subscriber that has the server's public key",
        )
    ]
    text = base + "    server_secret_key_file: s\n    authorized_clients: c\n    allow_any_client: true\n"
    assert problems_of(text, tmp_path) == [
        ("publish.curve.allow_any_client", 10, "give authorized_clients or allow_any_client: true, not both")
    ]
    text = base + "    authorized_clients: c\n    allow_any: true\n"
    assert problems_of(text, tmp_path) == [
        ("publish.curve.server_secret_key_file", 7, "missing required key 'server_secret_key_file'"),
        ("publish.curve.allow_any", 9, "unknown key 'allow_any' (did you mean 'allow_any_client'?)"),
    ]


def test_curve_key_path_from_environment(tmp_path: Path) -> None:
    text = MINIMAL + "publish:\n  curve:\n    server_secret_key_file: ${KEYS}/server.key_secret\n"
    text += "    allow_any_client: true\n"
    cfg = parse(text, tmp_path, env={"KEYS": "/run/keys"})
    assert cfg.publish.curve is not None
    assert cfg.publish.curve.server_secret_key_file == Path("/run/keys/server.key_secret")
