"""Type-check the TensorRT backend (`TARGETS`) with mypy against the ``tensorrt-stubs`` package.

TensorRT cannot be installed on the project's machines, so this is how a call that does not exist in the
TensorRT Python API is caught. ``tensorrt-stubs`` cannot be used as it is installed:

- it puts ``tensorrt/__init__.pyi`` into site-packages without a ``py.typed`` marker, so mypy skips it
  (PEP 561) and, with the project's ``ignore_missing_imports``, silently types all of TensorRT as ``Any``;
- its generated ``tensorrt_bindings/tensorrt.pyi`` has syntax errors (parameters named ``in``, a
  parameter without default after defaulted ones), a module attribute ``bool: DataType`` that shadows the
  builtin in every ``-> bool`` annotation, an undefined ``capsule`` type, annotations with
  ``typing_extensions.Buffer`` without importing ``typing_extensions``, and an import of ``tensorrt_libs``.

So the installed stub files are copied into a scratch folder with those mechanical repairs (no API is
added, removed or retyped), and mypy runs with that folder on ``mypy_path``, strict settings for the
checked files, and the stubs' own remaining errors ignored. A canary file that calls a method TensorRT
does not have must fail, which proves the stubs are really in use.

Install the stubs without their dependencies (they require the ``tensorrt`` wheel itself, which downloads
from NVIDIA's index): ``pip install --no-deps tensorrt-stubs==10.13.0.35.1``.

Run as ``python -m tests.engine.trt_typecheck`` (exit status is mypy's); `tests/engine/test_tensorrt.py`
runs the same check under pytest.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGETS = (ROOT / "streamer" / "engine" / "tensorrt.py", ROOT / "streamer" / "engine" / "tensorrt_build.py")
STUBS_DIST = "tensorrt-stubs"
_STUB_FILES = ("tensorrt/__init__.pyi", "tensorrt_bindings/__init__.pyi", "tensorrt_bindings/tensorrt.pyi")

CANARY = """\
import tensorrt as trt

logger = trt.Logger(trt.Logger.WARNING)
builder = trt.Builder(logger)
builder.build_cuda_engine_that_does_not_exist()
"""


def stubs_version() -> str | None:
    """The installed ``tensorrt-stubs`` version, or None when it is not installed."""
    try:
        return metadata.version(STUBS_DIST)
    except metadata.PackageNotFoundError:
        return None


def _repair(rel: str, text: str) -> str:
    if rel.endswith("__init__.pyi"):
        return re.sub(r"(?m)^import tensorrt_libs as tensorrt_libs\n", "", text)
    # `in` is a keyword: the generated parameter name cannot be parsed.
    text = re.sub(r"([(,] ?)in: ", r"\1in_: ", text)
    # A parameter without a default after defaulted ones (add_scale_nd's channel_axis).
    text = re.sub(
        r"(def [^\n]*= None, )(\w+): (\w+)\)",
        lambda m: f"{m.group(1)}{m.group(2)}: {m.group(3)} = ...)",
        text,
    )
    # The module attribute `bool: DataType` shadows the builtin in every annotation below it.
    lines = []
    for line in text.splitlines(keepends=True):
        if not line.startswith("bool: "):
            line = re.sub(r"(?<![.\w])bool\b", "builtins.bool", line)
        lines.append(line)
    text = "".join(lines)
    # `typing_extensions.Buffer` is used in annotations but never imported (it would silently be Any).
    header = (
        "import builtins\nimport typing_extensions\n"
        "capsule: typing.TypeAlias = typing.Any  # a pybind11 capsule (an address)\n"
    )
    return text.replace("import typing\n", "import typing\n" + header, 1)


def prepare_stubs(dest: Path) -> Path:
    """Copy the installed ``tensorrt-stubs`` files, repaired, into `dest`; returns `dest`."""
    dist = metadata.distribution(STUBS_DIST)
    for rel in _STUB_FILES:
        src = Path(str(dist.locate_file(rel)))
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_repair(rel, src.read_text(encoding="utf-8")), encoding="utf-8")
    return dest


def _config(stubs: Path) -> str:
    return f"""\
[mypy]
python_version = 3.10
mypy_path = {stubs}
strict = True
follow_imports = silent
warn_unused_ignores = True
show_error_codes = True
no_incremental = True

[mypy-tensorrt.*,tensorrt_bindings.*]
ignore_errors = True

[mypy-cuda.*,onnx.*,cv2.*]
ignore_missing_imports = True
"""


def run_mypy(*files: Path, scratch: Path) -> subprocess.CompletedProcess[str]:
    """mypy (strict, repaired stubs on its path) over `files`; only errors in `files` are reported."""
    stubs = prepare_stubs(scratch / "stubs")
    config = scratch / "mypy.ini"
    config.write_text(_config(stubs), encoding="utf-8")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(config), *map(str, files)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def check(scratch: Path) -> tuple[subprocess.CompletedProcess[str], subprocess.CompletedProcess[str]]:
    """(mypy over `TARGETS`, mypy over the canary): the first must pass, the second must fail."""
    canary = scratch / "canary.py"
    canary.write_text(CANARY, encoding="utf-8")
    return run_mypy(*TARGETS, scratch=scratch), run_mypy(canary, scratch=scratch)


def main() -> int:
    version = stubs_version()
    if version is None:
        print(f"{STUBS_DIST} is not installed: pip install --no-deps {STUBS_DIST}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        target, canary = check(Path(tmp))
    print(f"mypy against {STUBS_DIST} {version}: {', '.join(str(t.relative_to(ROOT)) for t in TARGETS)}")
    print(target.stdout, end="")
    if canary.returncode == 0 or "build_cuda_engine_that_does_not_exist" not in canary.stdout:
        print("the canary passed: mypy is not using the TensorRT stubs\n" + canary.stdout, file=sys.stderr)
        return 1
    return target.returncode


if __name__ == "__main__":
    sys.exit(main())
