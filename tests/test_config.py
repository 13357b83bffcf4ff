"""Tests of `streamer.config` and `streamer.config.yamlfile`: defaults, every kind of mistake (with its
key and line), environment interpolation, path resolution, and the `check` command in a real subprocess."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from streamer.coco import COCO_CLASSES
from streamer.config import Config, SourceConfig, load_config, parse_config, redact_url
from streamer.errors import EXIT_CONFIG, EXIT_OK, ConfigError

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """\
model:
  onnx: yolov7.onnx
sources:
  - id: cam1
    url: rtsp://cam/stream
"""


def parse(text: str, env: dict[str, str] | None = None, base_dir: Path | None = None) -> Config:
    return parse_config(textwrap.dedent(text), "test.yaml", env={} if env is None else env, base_dir=base_dir)


def problems_of(text: str, env: dict[str, str] | None = None) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    assert info.value.filename == "test.yaml"
    return [(p.key, p.line, p.message) for p in info.value.problems]


# ------------------------------------------------------------------------------------------ valid configs


def test_engine_compile_accepts_yaml_booleans_and_batch_sizes_stay_within_max_batch() -> None:
    on = parse(MINIMAL + "engine:\n  compile: on\n  batch_sizes: [1, 4]\n")
    off = parse(MINIMAL + "engine:\n  compile: off\n")  # YAML 1.1 reads both as booleans
    assert (on.engine.compile, on.engine.batch_sizes, off.engine.compile) == ("on", (1, 4), "off")
    assert problems_of(MINIMAL + "engine:\n  max_batch: 8\n  batch_sizes: [4, 16]\n") == [
        ("engine.batch_sizes[1]", 8, "must be between 1 and max_batch (8), got 16")
    ]


def test_minimal_config_has_all_defaults(tmp_path: Path) -> None:
    cfg = parse(MINIMAL, base_dir=tmp_path)
    assert cfg.model.onnx == tmp_path / "yolov7.onnx"
    assert cfg.model.input_size is None
    assert cfg.model.class_names is None
    assert cfg.model.effective_class_names == COCO_CLASSES
    assert cfg.model.channel_order == "rgb"
    assert cfg.engine.model_dump() == {
        "backend": "auto",
        "device": "auto",
        "devices": None,
        "precision": "fp32",
        "max_batch": 4,
        "batch_timeout_ms": 10.0,
        "threads": None,
        "inflight": 2,
        "concurrent_batches": False,
        "compile": "auto",
        "batch_sizes": None,
        "cuda_graphs": True,
        "workspace_mb": None,
        "opt_batch": None,
        "calibration_images": None,
    }
    assert cfg.detection.model_dump() == {
        "confidence": 0.25,
        "iou": 0.45,
        "max_detections": 300,
        "classes": None,
        "agnostic_nms": False,
        "multi_label": False,
    }
    (src,) = cfg.sources
    assert (src.id, src.url, src.decoder, src.fps_limit, src.loop, src.realtime, src.ring_slots) == (
        "cam1",
        "rtsp://cam/stream",
        "auto",
        None,
        False,
        None,
        4,
    )
    assert src.is_live and src.paced
    assert cfg.publish.model_dump() == {
        "endpoint": "tcp://127.0.0.1:5555",
        "encoding": "json",
        "send_hwm": 1000,
        "curve": None,
    }
    assert cfg.logging.model_dump() == {"level": "INFO", "format": "text", "stats_interval_s": 5.0}
    assert cfg.source_path is None


FULL = """\
model:
  onnx: /models/yolov7-tiny.onnx
  input_size: [384, 640]
  class_names: [person, car, dog]
  channel_order: bgr
engine:
  backend: onnxruntime
  device: CUDA:1
  precision: fp16
  max_batch: 8
  batch_timeout_ms: 2.5
  threads: 4
  inflight: 3
detection:
  confidence: 0.5
  iou: 0.6
  max_detections: 100
  classes: [dog, 0, person]
  agnostic_nms: true
  multi_label: true
sources:
  - id: lobby
    url: /videos/lobby.mp4
    decoder: cpu
    fps_limit: 10
    loop: true
    ring_slots: 8
  - id: gate_2
    url: rtsps://viewer:${CAM_PASSWORD}@10.0.0.7:322/stream1
    decoder: nvdec
    realtime: false
publish:
  endpoint: ipc:///run/yolostream.sock
  encoding: msgpack
  send_hwm: 50
logging:
  level: debug
  format: json
  stats_interval_s: 0
"""


def test_full_config_loads() -> None:
    cfg = parse(FULL, env={"CAM_PASSWORD": "s3cr3t"})
    assert cfg.model.input_size == (384, 640)
    assert cfg.model.effective_class_names == ("person", "car", "dog")
    assert cfg.model.channel_order == "bgr"
    assert (cfg.engine.backend, cfg.engine.device, cfg.engine.precision) == ("onnxruntime", "cuda:1", "fp16")
    assert (cfg.engine.max_batch, cfg.engine.batch_timeout_ms, cfg.engine.threads, cfg.engine.inflight) == (
        8,
        2.5,
        4,
        3,
    )
    assert cfg.detection.classes == (2, 0)  # names resolved to ids, duplicates dropped, order kept
    assert cfg.detection.class_ids == (2, 0)
    assert cfg.detection.agnostic_nms and cfg.detection.multi_label
    lobby, gate = cfg.sources
    assert lobby.fps_limit == 10.0 and isinstance(lobby.fps_limit, float)
    assert lobby.loop and not lobby.is_live and not lobby.paced and lobby.ring_slots == 8
    assert gate.url == "rtsps://viewer:s3cr3t@10.0.0.7:322/stream1"
    assert gate.is_live and not gate.paced  # realtime: false overrides the live default
    assert (cfg.publish.endpoint, cfg.publish.encoding, cfg.publish.send_hwm) == (
        "ipc:///run/yolostream.sock",
        "msgpack",
        50,
    )
    assert (cfg.logging.level, cfg.logging.format, cfg.logging.stats_interval_s) == ("DEBUG", "json", 0.0)


def test_example_config_loads() -> None:
    cfg = load_config(REPO / "config" / "example.yaml", env={"CAM_PASSWORD": "pw"})
    assert [s.is_live for s in cfg.sources] == [False, True]
    assert "pw" not in cfg.sources[1].display_url


def test_the_check_command_written_at_the_top_of_the_example_config_passes() -> None:
    """A first user copies the command from config/example.yaml's header: it must work as written."""
    header = (REPO / "config" / "example.yaml").read_text().splitlines()[:6]
    command = next(line.lstrip("# ").strip() for line in header if "yolostream check" in line)
    env = {k: v for k, v in os.environ.items() if k != "CAM_PASSWORD"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run(
        command, shell=True, cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == EXIT_OK, result.stderr
    assert "OK (2 stream(s)" in result.stdout


def test_config_is_frozen_and_hashable() -> None:
    cfg = parse(MINIMAL)
    with pytest.raises(ValidationError):
        cfg.engine.max_batch = 2
    assert hash(cfg) == hash(parse(MINIMAL))


def test_config_survives_pickling_for_worker_processes(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL)
    cfg = load_config(path)
    copy = pickle.loads(pickle.dumps(cfg))
    assert copy == cfg and copy.source_path == path


def test_input_size_int_means_square_and_empty_section_means_defaults() -> None:
    cfg = parse(MINIMAL.replace("  onnx:", "  input_size: 320\n  onnx:") + "engine:\nlogging:\n")
    assert cfg.model.input_size == (320, 320)
    assert cfg.engine.max_batch == 4 and cfg.logging.level == "INFO"


def test_yaml_anchors_and_merge_keys() -> None:
    cfg = parse(
        """\
        model: {onnx: m.onnx}
        sources:
          - &cam {id: a, url: "rtsp://cam/1", fps_limit: 5, decoder: nvdec}
          - <<: *cam
            id: b
        """
    )
    assert [(s.id, s.fps_limit, s.decoder) for s in cfg.sources] == [("a", 5.0, "nvdec"), ("b", 5.0, "nvdec")]


def test_x_keys_hold_anchors_and_merged_problems_point_at_the_anchor() -> None:
    text = """\
    x-camera: &camera
      decoder: nvdec
      fps_limit: -1
    model: {onnx: m.onnx}
    sources:
      - <<: *camera
        id: a
        url: rtsp://cam/a
    """
    assert problems_of(text) == [("sources[0].fps_limit", 3, "must be > 0, got -1")]
    cfg = parse(text.replace("-1", "5"))
    assert (cfg.sources[0].decoder, cfg.sources[0].fps_limit) == ("nvdec", 5.0)


def test_keys_stay_strings_even_when_yaml_1_1_would_make_them_booleans() -> None:
    problems = problems_of(MINIMAL + "on: 1\n")
    assert problems == [("on", 6, "unknown key 'on'")]


# ------------------------------------------------------------------------------------------ malformed configs

BAD_CASES = [
    pytest.param(MINIMAL + "extras: 1\n", "extras", 6, "unknown key 'extras'", id="unknown-top-level-key"),
    pytest.param(
        MINIMAL + "    fps_limt: 5\n",
        "sources[0].fps_limt",
        6,
        "unknown key 'fps_limt' (did you mean 'fps_limit'?)",
        id="unknown-nested-key-typo",
    ),
    pytest.param(
        MINIMAL + "engine:\n  max_batch: four\n",
        "engine.max_batch",
        7,
        "must be an integer, got 'four'",
        id="string-for-int",
    ),
    pytest.param(
        MINIMAL + "engine:\n  max_batch: true\n",
        "engine.max_batch",
        7,
        "must be an integer, got true",
        id="bool-for-int",
    ),
    pytest.param(
        MINIMAL + "detection:\n  confidence: 1.5\n",
        "detection.confidence",
        7,
        "must be <= 1, got 1.5",
        id="confidence-out-of-range",
    ),
    pytest.param(
        MINIMAL + "detection:\n  confidence: 0\n",
        "detection.confidence",
        7,
        "must be > 0, got 0",
        id="confidence-zero",
    ),
    pytest.param(
        MINIMAL + "    fps_limit: -3\n",
        "sources[0].fps_limit",
        6,
        "must be > 0, got -3",
        id="negative-fps-limit",
    ),
    pytest.param(
        "model:\n  onnx: m.onnx\n", "sources", 1, "missing required key 'sources'", id="missing-sources"
    ),
    pytest.param(
        "sources: []\nmodel:\n  onnx: m.onnx\n", "sources", 1, "must not be empty", id="empty-sources-list"
    ),
    pytest.param(
        "model:\n  onnx: m.onnx\nsources:\n  - id: a\n    decoder: cpu\n",
        "sources[0].url",
        4,
        "missing required key 'url'",
        id="source-without-url",
    ),
    pytest.param(
        MINIMAL + "  - id: cam2\n    url: a.mp4\n  - id: cam1\n    url: b.mp4\n",
        "sources[2].id",
        8,
        "duplicate stream id 'cam1' (also sources[0])",
        id="duplicate-stream-id",
    ),
    pytest.param(
        MINIMAL.replace("id: cam1", "id: cam 1"),
        "sources[0].id",
        4,
        "must start with a letter or digit and contain only letters, digits, '_' and '-'",
        id="bad-id-characters",
    ),
    pytest.param(
        MINIMAL.replace("id: cam1", "id: " + "c" * 65),
        "sources[0].id",
        4,
        "must be at most 64 characters long",
        id="id-too-long",
    ),
    pytest.param(
        MINIMAL.replace("rtsp://cam/stream", "ftp://cam/stream"),
        "sources[0].url",
        5,
        "unsupported URL scheme 'ftp://'",
        id="bad-url-scheme",
    ),
    pytest.param(
        MINIMAL.replace("rtsp://cam/stream", "rtsp:///stream"),
        "sources[0].url",
        5,
        "has no host",
        id="url-without-host",
    ),
    pytest.param(
        MINIMAL + "    loop: true\n",
        "sources[0].loop",
        6,
        "loop is only for files",
        id="loop-on-rtsp",
    ),
    pytest.param(
        MINIMAL + '    loop: "yes"\n',
        "sources[0].loop",
        6,
        "must be true or false, got 'yes'",
        id="string-for-bool",
    ),
    pytest.param(
        MINIMAL + "engine:\n  backend: tensorflow\n",
        "engine.backend",
        7,
        "must be one of auto, onnxruntime, torch, tensorrt, got 'tensorflow' (did you mean 'tensorrt'?)",
        id="bad-enum-backend",
    ),
    pytest.param(
        MINIMAL + "engine:\n  device: gpu0\n",
        "engine.device",
        7,
        "must be auto, cpu, cuda or cuda:N",
        id="bad-device",
    ),
    pytest.param(
        "model:\n  onnx: m.onnx\n  input_size: [640, 600]\n" + MINIMAL.split("\n", 2)[2],
        "model.input_size",
        3,
        "each side must be a positive multiple of 32 (YOLOv7's stride), got 600",
        id="input-size-not-multiple-of-32",
    ),
    pytest.param(
        "model:\n  onnx: m.onnx\n  input_size: [640]\n" + MINIMAL.split("\n", 2)[2],
        "model.input_size",
        3,
        "must be a size like 640 or [height, width], got a list",
        id="input-size-one-side",
    ),
    pytest.param(
        MINIMAL + "detection:\n  classes:\n    - person\n    - dgo\n",
        "detection.classes[1]",
        9,
        "unknown class name 'dgo' (did you mean 'dog'?)",
        id="unknown-class-name",
    ),
    pytest.param(
        MINIMAL + "detection:\n  classes: []\n",
        "detection.classes",
        7,
        "must not be empty",
        id="empty-classes-list",
    ),
    pytest.param(
        MINIMAL + "detection:\n  classes: [1, -2]\n",
        "detection.classes[1]",
        7,
        "a class id must be >= 0, got -2",
        id="negative-class-id",
    ),
    pytest.param(
        MINIMAL.replace("  onnx: yolov7.onnx", "  onnx: m.onnx\n  class_names: [a, b]")
        + "detection:\n  classes: [5]\n",
        "detection.classes[0]",
        8,
        "class id 5 is out of range: the model has 2 classes",
        id="class-id-out-of-range",
    ),
    pytest.param(
        MINIMAL.replace("rtsp://cam/stream", "rtsp://admin:${CAM_PASSWORD}@cam/stream"),
        "sources[0].url",
        5,
        "environment variable 'CAM_PASSWORD' is not set (and ${CAM_PASSWORD} has no :-default)",
        id="undefined-variable",
    ),
    pytest.param(
        MINIMAL + "    fps_limit: ${1FPS}\n",
        "sources[0].fps_limit",
        6,
        "bad variable reference '${1FPS}'",
        id="bad-variable-syntax",
    ),
    pytest.param(
        "model:\n  onnx: m.onnx\n  input_size: [640\nsources: []\n",
        "",
        4,
        "YAML syntax error: expected ',' or ']', but got ':' (while parsing a flow sequence on line 3)",
        id="yaml-syntax-error",
    ),
    pytest.param(
        "model:\n  onnx: m.onnx\n\tinput_size: 640\n",
        "",
        3,
        "indent with spaces, not tabs",
        id="yaml-tab",
    ),
    pytest.param(
        "model:\n  onnx: a.onnx\n  onnx: b.onnx\n" + MINIMAL.split("\n", 2)[2],
        "model.onnx",
        3,
        "duplicate key 'onnx' (first given on line 2)",
        id="duplicate-key",
    ),
    pytest.param("- model: x\n", "", 1, "the top level must be a mapping of sections", id="top-level-list"),
    pytest.param("just text\n", "", 1, "the top level must be a mapping of sections", id="top-level-scalar"),
    pytest.param("# nothing here\n", "", 1, "the file is empty", id="empty-file"),
    pytest.param(
        MINIMAL + "publish:\n  endpoint: udp://0.0.0.0:5555\n",
        "publish.endpoint",
        7,
        "must be a ZeroMQ endpoint starting with tcp://, ipc:// or inproc://",
        id="bad-publish-endpoint",
    ),
    pytest.param(
        MINIMAL + "engine:\n  max_batch: 0\n",
        "engine.max_batch",
        7,
        "must be >= 1, got 0",
        id="max-batch-zero",
    ),
    pytest.param(
        MINIMAL + "    ring_slots: 65\n",
        "sources[0].ring_slots",
        6,
        "must be <= 64, got 65",
        id="ring-slots-too-many",
    ),
    pytest.param(
        MINIMAL.split("\n", 2)[2], "model", 1, "missing required key 'model'", id="missing-model-section"
    ),
    pytest.param(
        "model:\n  channel_order: rgb\n" + MINIMAL.split("\n", 2)[2],
        "model",
        1,
        "missing model: give model.name (e.g. yolov7-coco) or model.onnx",
        id="missing-onnx",
    ),
    pytest.param(
        "model:\n  name: yolov7-tiny\n" + MINIMAL.split("\n", 2)[2],
        "model.name",
        2,
        "unknown model name 'yolov7-tiny'; known: yolov7-coco",
        id="unknown-named-model",
    ),
    pytest.param(
        "model:\n  name: yolov7-coco\n  onnx: m.onnx\n" + MINIMAL.split("\n", 2)[2],
        "model.name",
        2,
        "give either model.name or model.onnx, not both",
        id="name-and-onnx",
    ),
    pytest.param(
        "model:\n  onnx: m.onnx\nsources:\n  - rtsp://cam/1\n",
        "sources[0]",
        4,
        "must be a mapping (key: value lines), got 'rtsp://cam/1'",
        id="list-item-not-a-mapping",
    ),
    pytest.param(
        MINIMAL + "engine: [onnxruntime]\n",
        "engine",
        6,
        "must be a mapping (key: value lines)",
        id="section-a-list",
    ),
    pytest.param(
        MINIMAL + "logging:\n  level: verbose\n",
        "logging.level",
        7,
        "must be one of DEBUG, INFO, WARNING, ERROR, got 'VERBOSE'",
        id="bad-log-level",
    ),
    pytest.param(
        MINIMAL + "    fps_limit: !fps 5\n",
        "sources[0].fps_limit",
        6,
        "cannot read this value",
        id="unknown-tag",
    ),
]


@pytest.mark.parametrize(("text", "key", "line", "message"), BAD_CASES)
def test_malformed_config_names_key_and_line(text: str, key: str, line: int | None, message: str) -> None:
    problems = problems_of(text)
    assert len(problems) == 1, problems
    assert problems[0][:2] == (key, line)
    assert message in problems[0][2]


def test_every_problem_in_a_file_is_reported() -> None:
    text = """\
    model:
      onnx: m.onnx
      input_size: 100
    engine:
      backend: tensorflow
      max_batch: 0
    detection:
      confidence: 2
    sources:
      - id: a
        url: ftp://x
        fps_limt: 3
      - id: b
        url: rtsp://cam/${PATH_PART}
      - url: rtsp://cam/2
    publish:
      endpoint: http://x
    extra: true
    """
    problems = problems_of(text)
    assert [(key, line) for key, line, _ in problems] == [
        ("model.input_size", 3),
        ("engine.backend", 5),
        ("engine.max_batch", 6),
        ("detection.confidence", 8),
        ("sources[0].url", 11),
        ("sources[0].fps_limt", 12),
        ("sources[1].url", 14),
        ("sources[2].id", 15),
        ("publish.endpoint", 17),
        ("extra", 18),
    ]


def test_error_text_has_one_line_per_problem() -> None:
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL + "engine:\n  max_batch: 0\n  inflight: 9\n")
    assert str(info.value).splitlines() == [
        "test.yaml:7: engine.max_batch: must be >= 1, got 0",
        "test.yaml:8: engine.inflight: must be <= 8, got 9",
    ]


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.filename == str(missing)
    assert "cannot read the file: No such file or directory" in str(info.value)


# --------------------------------------------------------------------------------------------- environment


def test_variables_defaults_and_escapes() -> None:
    cfg = parse(
        """\
        model:
          onnx: ${MODELS:-/opt/models}/yolov7.onnx
        sources:
          - id: ${CAM_ID}
            url: rtsp://admin:${CAM_PASSWORD}@cam/$${NOT_A_VAR}
        publish:
          endpoint: tcp://${HOST:-127.0.0.1}:${PORT:-5555}
        """,
        env={"CAM_ID": "front", "CAM_PASSWORD": "p@ss:w/rd", "HOST": ""},
    )
    assert cfg.model.onnx == Path("/opt/models/yolov7.onnx")
    assert cfg.sources[0].id == "front"
    assert cfg.sources[0].url == "rtsp://admin:p@ss:w/rd@cam/${NOT_A_VAR}"
    assert cfg.publish.endpoint == "tcp://127.0.0.1:5555"  # an empty variable takes the default, as in sh


def test_a_whole_plain_reference_is_typed_like_yaml() -> None:
    cfg = parse(
        MINIMAL.replace("rtsp://cam/stream", "stream.mp4")
        + "    fps_limit: ${FPS}\n    ring_slots: ${SLOTS:-8}\n    loop: ${LOOP}\n"
        # (a block list: in a [flow, list] YAML takes `{` for the start of a mapping)
        + "detection:\n  classes:\n    - ${CLASS}\n",
        env={"FPS": "12.5", "LOOP": "true", "CLASS": "2"},
    )
    src = cfg.sources[0]
    assert (src.fps_limit, src.ring_slots, src.loop) == (12.5, 8, True)
    assert cfg.detection.classes == (2,)


def test_a_quoted_reference_stays_a_string() -> None:
    problems = problems_of(MINIMAL + '    fps_limit: "${FPS}"\n', env={"FPS": "12"})
    assert problems == [("sources[0].fps_limit", 6, "must be a number, got '12'")]


def test_load_config_uses_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLOSTREAM_TEST_FPS", "7")
    path = tmp_path / "c.yaml"
    path.write_text(MINIMAL + "    fps_limit: ${YOLOSTREAM_TEST_FPS}\n")
    assert load_config(path).sources[0].fps_limit == 7.0


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://user:hunter2@cam:554/live", "rtsp://user:***@cam:554/live"),
        ("rtsp://user:p@ss/w:rd@cam/live", "rtsp://user:***@cam/live"),
        (
            "https://cam/video.mjpg?user=a&password=hunter2&x=1",
            "https://cam/video.mjpg?user=a&password=***&x=1",
        ),
        ("rtsp://cam/live", "rtsp://cam/live"),
    ],
)
def test_display_url_redacts_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "hunter2" not in redact_url(url) and "p@ss" not in redact_url(url)


def test_secret_from_environment_never_shown() -> None:
    secret = "Zq9-secret"
    cfg = parse(FULL, env={"CAM_PASSWORD": secret})
    gate = cfg.sources[1]
    assert secret in gate.url
    assert gate.display_url == "rtsps://viewer:***@10.0.0.7:322/stream1"
    assert secret not in repr(cfg) and secret not in str(gate)
    # A rejected URL is shown redacted in the error too.
    with pytest.raises(ConfigError) as info:
        parse(MINIMAL.replace("rtsp://cam/stream", "ftp://u:${PW}@cam/x"), env={"PW": secret})
    assert secret not in str(info.value) and "ftp://u:***@cam/x" in str(info.value)


# ------------------------------------------------------------------------------------------------ paths


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    path = conf_dir / "yolostream.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            model:
              onnx: models/yolov7.onnx
            sources:
              - {id: a, url: videos/a.mp4}
              - {id: b, url: /abs/b.mp4}
              - {id: c, url: "file:///abs/c%20d.mp4"}
              - {id: d, url: "file:rel/d.mp4"}
              - {id: e, url: rtsp://cam/e}
            """
        )
    )
    cfg = load_config(path)
    assert cfg.source_path == path
    assert cfg.model.onnx == conf_dir / "models" / "yolov7.onnx"
    assert [s.url for s in cfg.sources] == [
        str(conf_dir / "videos" / "a.mp4"),
        "/abs/b.mp4",
        "/abs/c d.mp4",
        str(conf_dir / "rel" / "d.mp4"),
        "rtsp://cam/e",
    ]
    assert [s.is_live for s in cfg.sources] == [False, False, False, False, True]


def test_parse_config_resolves_against_cwd_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = parse_config(MINIMAL, env={})
    assert cfg.model.onnx == tmp_path / "yolov7.onnx"


def test_source_config_can_be_built_in_code() -> None:
    src = SourceConfig(id="x", url="rtsp://u:p@h/s")
    assert src.is_live and src.paced and src.display_url == "rtsp://u:***@h/s"


# ------------------------------------------------------------------------------------- the check command


def run_check(path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("CAM_PASSWORD", None)
    return subprocess.run(
        [sys.executable, "-m", "streamer", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_check_command_reports_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MINIMAL + "    fps_limit: -1\ndetection:\n  iou: 0\n")
    result = run_check(path)
    assert result.returncode == EXIT_CONFIG
    assert f"{path}:6: sources[0].fps_limit: must be > 0, got -1" in result.stderr
    assert f"{path}:8: detection.iou: must be > 0, got 0" in result.stderr


def test_check_command_reports_undefined_variable(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(MINIMAL.replace("rtsp://cam/stream", "rtsp://u:${CAM_PASSWORD}@cam/stream"))
    result = run_check(path)
    assert result.returncode == EXIT_CONFIG
    assert f"{path}:5: sources[0].url: environment variable 'CAM_PASSWORD' is not set" in result.stderr


def test_check_command_accepts_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(MINIMAL)
    result = run_check(path)
    assert result.returncode == EXIT_OK, result.stderr
    assert "OK (1 stream(s): cam1)" in result.stdout


@pytest.mark.parametrize(("text", "key", "line", "message"), BAD_CASES)
def test_check_command_exits_2_naming_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, key: str, line: int | None, message: str
) -> None:
    from streamer.cli.main import main

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    where = f"{path}:{line}:" if line is not None else f"{path}:"
    assert f"{where} {key}:" in err if key else where in err
    assert message in err


def test_build_says_there_is_nothing_to_build_for_onnxruntime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from streamer.cli.main import main

    path = tmp_path / "cpu.yaml"
    path.write_text(MINIMAL + "engine:\n  backend: onnxruntime\n")
    assert main(["build", str(path)]) == EXIT_OK
    assert "nothing to build: onnxruntime runs the ONNX file as it is" in capsys.readouterr().out


# ----------------------------------------------------------------------------------- tracking, zones, lines

ANALYTICS = """\
model:
  onnx: yolov7.onnx
  class_names: [person, car]
sources:
  - id: a
    url: /v/a.mp4
    zones:
      - name: yard
        polygon: [[0, 0], [1, 1], [0, 1]]
        classes: [persn]
    lines:
      - {name: yard, points: [[0, 0], [1, 0]], coords: normalized}
  - id: b
    url: /v/b.mp4
    tracking: {enabled: true, low_score: 0.9}
"""


def test_zones_and_lines_need_tracking_unique_names_and_known_classes() -> None:
    assert problems_of(ANALYTICS) == [
        ("sources[0].zones", 7, "zones need tracking: set tracking.enabled (globally or for the source)"),
        ("sources[0].zones[0].classes[0]", 10, "unknown class name 'persn' (did you mean 'person'?)"),
        ("sources[0].lines", 11, "lines need tracking: set tracking.enabled (globally or for the source)"),
        ("sources[0].lines[0].name", 12, "duplicate name 'yard' (also a zone)"),
        ("sources[1].tracking.low_score", 15, "must be <= high_score (0.5), got 0.9"),
    ]


def test_zone_and_line_geometry_is_checked_and_classes_resolved() -> None:
    bad = ANALYTICS.replace("[[0, 0], [1, 1], [0, 1]]", "[[0, 0], [1, 1], [2, 2]]").replace(
        "[1, 0]]", "[1.5, 0]]"
    )
    assert problems_of(bad) == [
        ("sources[0].zones[0].polygon", 9, "has no area (its corners lie on one line)"),
        ("sources[0].lines[0].points[1]", 12, "normalized coordinates must be within 0..1, got [1.5, 0]"),
    ]
    good = "tracking: {enabled: true}\n" + ANALYTICS.replace("persn", "car").replace(
        "name: yard,", "name: door,"
    )
    cfg = parse(good.replace("low_score: 0.9", "low_score: 0.3"))
    assert cfg.sources[0].zones[0].classes == (1,)
    assert cfg.sources[0].lines[0].coords == "normalized"
    assert cfg.tracking_for(cfg.sources[1]).low_score == 0.3


def test_a_cameras_file_names_its_own_keys_in_errors(tmp_path: Path) -> None:
    from streamer.config import load_sources

    cameras = tmp_path / "cameras.yaml"
    cameras.write_text("sourcs:\n  - {id: a, url: rtsp://h/a}\n")
    with pytest.raises(ConfigError) as caught:
        load_sources(cameras)
    assert "cameras.yaml:1: sourcs: unknown key 'sourcs' (did you mean 'sources'?)" in str(caught.value)
    cameras.write_text("sources:\n  - {id: a, url: rtsp://h/a, fps_limt: 5}\nmodel: {onnx: m.onnx}\n")
    with pytest.raises(ConfigError) as caught:
        load_sources(cameras)
    text = str(caught.value)
    assert "cameras.yaml:2: sources[0].fps_limt: unknown key 'fps_limt' (did you mean 'fps_limit'?)" in text
    assert "cameras.yaml:3: model: unknown key 'model'" in text
    assert "did you mean 'model'" not in text  # (a cameras file has no model section to suggest)
    cameras.write_text("sources:\n  - {id: a, url: a.mp4}\n")
    assert [(s.id, s.url) for s in load_sources(cameras)] == [("a", str(tmp_path / "a.mp4"))]
