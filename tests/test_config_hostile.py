"""Config input that must neither wedge nor crash `check` (nor a SIGHUP reload, which parses the same way).

Each case is a file a careless or hostile hand could write: an alias bomb, huge numbers, deep nesting, a
FIFO behind ``${file:}``, impossible ports, a flood of stats lines, a password under the wrong key. Then a
seeded fuzz of mutated example configs: every one exits 0 or 2 (within 5 s, never a traceback), every
problem it reports has a line number, and no message shows a password.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from streamer.config import MAX_CONFIG_BYTES, load_config, parse_config
from streamer.errors import ConfigError
from tests.test_config import MINIMAL

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail (instead of hanging the suite) when the block takes longer than `seconds`."""

    def expired(*_: object) -> None:
        raise TimeoutError(f"took longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


PASSWORD = "pw-7f3a9c"  # a password the mutated configs carry: no output may contain it


def problems(text: str, base_dir: Path | None = None) -> list[tuple[str, int | None, str]]:
    with deadline(5), pytest.raises(ConfigError) as info:
        parse_config(text, "test.yaml", env={}, base_dir=base_dir)
    return [(p.key, p.line, p.message) for p in info.value.problems]


def test_an_alias_bomb_is_refused_at_once() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        levels.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    bomb = MINIMAL + "x-bomb:\n" + "".join(f"  {line}\n" for line in levels)
    started = time.monotonic()
    ((key, line, message),) = problems(bomb)
    assert time.monotonic() - started < 5
    assert key == "" and line is not None and "expands to more than 100,000 values" in message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 20_000 + "]" * 20_000, "nested too deeply"),
        ("a: " + "{a: " * 5_000 + "1" + "}" * 5_000, "nested too deeply"),
        ("\n".join(f"{' ' * 2 * i}k{i}:" for i in range(100)) + " 1\n", "nested too deeply"),
    ],
    ids=["20000-brackets", "5000-braces", "100-levels"],
)
def test_deep_nesting_is_a_problem_with_a_line(text: str, message: str) -> None:
    ((_, line, got),) = problems(text)
    assert line is not None and message in got


def test_a_number_of_5001_digits_is_a_problem_of_its_key() -> None:
    found = problems(MINIMAL + "engine:\n  max_batch: " + "9" * 5001 + "\n")
    assert ("engine.max_batch", 7, "cannot read this value: a number of 5001 characters") in found


def test_a_secret_file_must_be_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # nobody ever writes to it: reading it would block for ever
    for name in (str(fifo), "/dev/zero", str(tmp_path)):
        text = MINIMAL.replace("rtsp://cam/stream", f"rtsp://viewer:${{file:{name}}}@cam/stream")
        ((key, line, message),) = problems(text)
        assert (key, line) == ("sources[0].url", 5) and "is not a regular file" in message


def test_a_config_that_is_not_a_regular_file_or_is_huge_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with deadline(5), pytest.raises(ConfigError, match="not a regular file"):
        load_config(fifo)
    big = tmp_path / "big.yaml"
    big.write_text(MINIMAL + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError, match="a config is at most 1,048,576"):
        load_config(big)


@pytest.mark.parametrize(
    ("snippet", "key", "message"),
    [
        ("publish:\n  endpoint: tcp://127.0.0.1:99999\n", "publish.endpoint", "port from 1 to 65535"),
        ("publish:\n  endpoint: tcp://127.0.0.1:x\n", "publish.endpoint", "port from 1 to 65535"),
        ("logging:\n  stats_interval_s: 1.0e-10\n", "logging.stats_interval_s", "0 (off) or at least 1"),
    ],
)
def test_impossible_ports_and_intervals(snippet: str, key: str, message: str) -> None:
    found = problems(MINIMAL + snippet)
    assert any(k == key and line is not None and message in m for k, line, m in found), found


@pytest.mark.parametrize("port", ["abc", "99999", "0"])
def test_an_rtsp_port_that_cannot_be_is_refused_when_checked(port: str) -> None:
    found = problems(MINIMAL.replace("rtsp://cam/stream", f"rtsp://viewer:p@ss/w:rd@cam:{port}/stream"))
    ((key, line, message),) = found
    assert (key, line) == ("sources[0].url", 5) and "port that is not 1 to 65535" in message
    assert "p@ss/w:rd" not in message and "***" in message


def test_a_password_under_the_wrong_key_is_never_printed() -> None:
    text = "model:\n  onnx: m.onnx\nsources:\n  - rtsp://viewer:secret@cam/stream\n"
    found = problems(text)
    assert found and all("secret" not in m for _, _, m in found), found
    assert any("***" in m for _, _, m in found)


def test_a_password_with_at_signs_slashes_and_colons_keeps_its_url_valid() -> None:
    cfg = parse_config(MINIMAL.replace("rtsp://cam/stream", "rtsp://u:p@ss/w:rd@cam:554/s"), env={})
    assert cfg.sources[0].url == "rtsp://u:p@ss/w:rd@cam:554/s"


# -- fuzz --------------------------------------------------------------------------------------------

HOSTILE_VALUES = [
    "9" * 5001, "-1", "1e-10", "[", "{", "&a [*a]", "!!python/object/apply:os.system ['true']", "\x00", "'",
    '"', "${NOPE}", "${file:/dev/zero}", "${file:/etc}", "${file:}", "tcp://127.0.0.1:99999",
    f"rtsp://u:{PASSWORD}@h:abc/x", "", "null", "~", "yes", "0x10", ".inf", ".nan", "[" * 3000, "{a: " * 3000,
    "*undefined", "<<: *x", "\t1", "é" * 50, "- a\n- b", "a: b: c",
]  # fmt: skip


def _mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        kind = rng.randrange(7)
        if kind == 0:
            del lines[i]
        elif kind == 1:
            lines.insert(i, lines[i])
        elif kind == 2:
            j = rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif kind == 3 and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {rng.choice(HOSTILE_VALUES)}"
        elif kind == 4:
            pos = rng.randrange(len(lines[i]) + 1)
            lines[i] = (
                lines[i][:pos]
                + rng.choice(["\t", "\x07", " ", "\u2028", "#", "&x ", "*x", "%"])
                + lines[i][pos:]
            )
        elif kind == 5:
            lines[i] = " " * rng.randint(1, 3) + lines[i] if rng.random() < 0.5 else lines[i].lstrip()
        else:
            lines = lines[: i + 1]
        if not lines:
            lines = ["#"]
    return "\n".join(lines) + "\n"


LINE = re.compile(r"^.+?:\d+: ")


def test_300_mutated_configs_exit_0_or_2_with_a_line_for_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streamer.cli.main import main

    monkeypatch.setenv("CAM_PASSWORD", PASSWORD)  # config/example.yaml's camera password
    seeds = [
        (REPO / "config" / "example.yaml").read_text(),
        (REPO / "config" / "demo.yaml").read_text(),
        textwrap.dedent(MINIMAL).replace("rtsp://cam/stream", "rtsp://viewer:${CAM_PASSWORD}@cam/stream"),
    ]
    rng = random.Random(20261202)
    codes = {0: 0, 2: 0}
    slowest = 0.0
    for n in range(300):
        path = tmp_path / f"case{n}.yaml"
        path.write_text(_mutate(rng.choice(seeds), rng), encoding="utf-8")
        started = time.monotonic()
        with deadline(5):
            code = main(["check", str(path)])  # any exception but SystemExit fails the test here
        slowest = max(slowest, time.monotonic() - started)
        out, err = capsys.readouterr()
        assert code in codes, (n, code, path.read_text(), err)
        codes[code] += 1
        assert PASSWORD not in out + err, (n, path.read_text(), err)
        if code == 2:
            reported = [ln for ln in err.splitlines() if ln.startswith(str(path))]
            assert reported and all(LINE.match(ln) for ln in reported), (n, path.read_text(), err)
    print(f"300 mutated configs: {codes[0]} valid, {codes[2]} refused; slowest check {slowest:.3f} s")
    assert codes[2] > 100  # the mutations do break most files
