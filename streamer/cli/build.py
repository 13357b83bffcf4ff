"""``yolostream build config.yaml``: make the config's engine ahead of time, so the daemon starts warm.

TensorRT: the plan, built and cached (`streamer.engine.tensorrt_build.build_plan`). torch on CUDA: every
batch size compiled once, which fills inductor's cache. ONNX Runtime and eager torch have nothing to build.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from streamer.engine.select import choose_backend, engine_options, tensorrt_settings
from streamer.errors import EXIT_OK, EngineError
from streamer.logs import setup_main
from streamer.models.registry import resolve

if TYPE_CHECKING:
    from streamer.config import Config


def build(cfg: Config) -> int:
    setup_main(cfg.logging.level, cfg.logging.format)
    backend = choose_backend(cfg.engine.backend, cfg.engine.device)
    if backend == "torch":
        return _compile_torch(cfg)
    if backend != "tensorrt":
        print(f"nothing to build: {backend} runs the ONNX file as it is")
        return EXIT_OK
    try:
        from streamer.engine.tensorrt_build import TensorRTBuildOptions, build_plan
    except ImportError as exc:
        raise EngineError(
            f"`yolostream build` makes TensorRT engines, and TensorRT 10 is not usable here: {exc}"
        ) from None
    print(build_plan(resolve(cfg.model), engine_options(cfg), TensorRTBuildOptions(**tensorrt_settings(cfg))))
    return EXIT_OK


def _compile_torch(cfg: Config) -> int:
    """Compile every batch size of the torch engine on CUDA once (inductor caches what it compiled)."""
    from streamer.engine.torch_device import TorchDeviceEngine, inductor_cache

    e = cfg.engine
    if e.compile == "off":
        print("nothing to build: engine.compile is off (the torch engine runs eager)")
        return EXIT_OK
    started = time.perf_counter()
    engine = TorchDeviceEngine(
        resolve(cfg.model), engine_options(cfg), cuda_graph=False, compile=e.compile, sizes=e.batch_sizes
    )
    engine.close()
    print(f"compiled {engine.variant} in {time.perf_counter() - started:.0f} s; cache: {inductor_cache()}")
    return EXIT_OK
