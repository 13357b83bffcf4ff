"""The backends of a ``yolostream parity`` run, as written on its command line:
``NAME[/PRECISION][/compiled|eager][:MODEL][@PREPROCESS]`` (`streamer.accuracy.parity` says what each
part means)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from streamer.accuracy.eval_pipeline import Overrides
from streamer.accuracy.parity_stages import PREPROCESSORS
from streamer.errors import YolostreamError


class ParityError(YolostreamError, ValueError):
    """The parity run cannot start: a bad backend list, no frames."""


PRECISIONS = ("fp32", "fp16", "int8")
COMPILE_WORDS = {"compiled": "on", "eager": "off"}


@dataclass(frozen=True)
class BackendSpec:
    """One backend of a parity run."""

    backend: str
    model: Path
    preprocess: str = "reference"
    label: str = ""
    precision: str | None = None
    """engine.precision for this backend (None: the config's)."""
    compile: str | None = None
    """engine.compile for this backend: ``on`` / ``off`` (None: the config's)."""

    def overrides(self) -> Overrides:
        # Input tensors are made on the host (the preprocessing stage compares them), except that
        # ``@cuda`` on a GPU engine runs the daemon's CUDA kernel itself.
        preprocess = "auto" if self.preprocess == "cuda" else "cpu"
        return Overrides(
            backend=self.backend, precision=self.precision, compile=self.compile, preprocess=preprocess
        )


def parse_backends(text: str, default_model: Path, base: Path | None = None) -> list[BackendSpec]:
    """``"onnxruntime,torch/fp16"`` → specs; ``NAME[/PRECISION][/compiled|eager][:MODEL][@PREPROCESS]``
    each (see the module docstring).

    Relative model paths are relative to `base` (the current directory by default).
    """
    specs = []
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        match = re.fullmatch(r"([A-Za-z0-9_]+)((?:/[A-Za-z0-9_]+)*)(?::([^@]+))?(?:@([A-Za-z0-9_]+))?", raw)
        if match is None:
            raise ParityError(
                f"cannot read backend {raw!r}: write NAME[/PRECISION][/compiled|eager][:MODEL][@PREPROCESS]"
            )
        name, options, model, pre = match.group(1), match.group(2), match.group(3), match.group(4)
        pre = pre or "reference"
        if pre not in PREPROCESSORS:
            raise ParityError(f"unknown preprocessing {pre!r} in {raw!r}; known: {', '.join(PREPROCESSORS)}")
        precision = compile_ = None
        for option in filter(None, options.split("/")):
            if option in PRECISIONS:
                precision = option
            elif option in COMPILE_WORDS:
                compile_ = COMPILE_WORDS[option]
            else:
                raise ParityError(
                    f"unknown option {option!r} in {raw!r}: a precision ({', '.join(PRECISIONS)}) "
                    "or compiled / eager"
                )
        path = default_model
        if model:
            path = Path(model)
            if not path.is_absolute() and base is not None:
                path = base / path
        specs.append(BackendSpec(name, path, pre, raw, precision, compile_))
    if len(specs) < 2:
        raise ParityError(f"parity needs at least two backends to compare, got {text!r}")
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ParityError(f"a backend is named twice in {text!r}")
    return specs
