#!/usr/bin/env bash
# One device call on the GPU host: unpack the carried packages, run the named stages, print a table last.
#
#   bash benchmarks/gpu_session.sh env probe kernel nvdec accuracy decode pipeline
#
# Needs .whl-gpu/site.tar.xz in the checkout (made here by `python benchmarks/pack_device_site.py`; carry
# [".whl-gpu"] and, for `pipeline`/`executor`, benchmarks/.cache). Each stage runs under its own time
# limit and writes $OUT/<stage>.log (or ./gpu-logs/ without $OUT); a stage that fails does not stop the
# next. Stages:
#   env       GPU, driver, versions of what was unpacked
#   probe     benchmarks/nvdec_probe.py: what PyNvVideoCodec's frames look like here
#   kernel    letterbox kernel and two-process CUDA ring tests
#   nvdec     NVDEC source (frames and pts equal PyAV's), fallback, the daemon with NVDEC + CPU fallback,
#             NVDEC streams sharing a process (killed: they resume)
#   engine    torch engine tests on CUDA
#   accuracy  kernel vs CPU reference, 5 sizes × H.264/HEVC (the histogram)
#   decode    NVDEC + ring + kernel vs bare PyNvVideoCodec, 1/4/8/16 streams
#   pipeline  the daemon, 16 × 1080p NVDEC, YOLOv7 640, vs the engine alone (fp32, then fp16)
#   profile   cProfile of the source and inference workers (one NVDEC stream; the fp16 daemon)
#   fp16-mps, fp16-contexts   experiments on the fp16 gap: the daemon under CUDA MPS; 4 streams instead of 16
#   variants  the torch engine eager vs compiled: build time cold and warm, images/s and host cost per size
#   executor  CUDA executor + GPU candidate filter + torch device engine tests (SITE=.whl-gpu/site-lite.tar.xz ok)
#   real-accuracy  fp16 compiled / fp16 eager / fp32 vs ONNX Runtime fp32 on yolov5s + tinycoco (lite site)
#   eval-gpu  tests/accuracy/test_eval_gpu.py (the oracle through the GPU path, CPU and CUDA letterbox), then
#             `yolostream eval` on the daemon's GPU engine fp32 / fp16 vs ONNX Runtime fp32 CPU (mAP on tinycoco),
#             `yolostream parity` fp16 vs fp32 (lite site + pycocotools; benchmarks/.cache/{yolov5s-coco.onnx,tinycoco})
#   save-cache  the compile caches into $OUT/cache.tar.xz (copy it to .whl-gpu/ and carry it: a warm start)
#   live      benchmarks/gpu_live.py: LIVE_STREAMS (4 16 32 48 64), LIVE_SECONDS (60) per count, LIVE_WARMUP (10),
#             LIVE_PER_PROCESS (supervisor.nvdec_streams_per_process, default 8)
#   mps-live  the same under CUDA MPS (LIVE_STREAMS 32 48, LIVE_SECONDS 30, LIVE_WARMUP 8, LIVE_BATCH 16)
#   pipeline-fp16, pipeline-mps, pipeline-fp32  unpaced daemon vs engine alone (16/48 fp16, MPS, fp32 16;
#             fp16: PIPELINE_STREAMS, PIPELINE_PER_PROCESS = supervisor.nvdec_streams_per_process;
#             PIPELINE_ARGS: more gpu_pipeline.py options, e.g. "--concurrent --inflight 3 --batch-sizes 16")
#   contention  benchmarks/gpu_contention.py: how much of the GPU 48 paced NVDEC streams take from the engine
#   contention-mps  the same under CUDA MPS (CONTENTION_PER_PROCESS, default "8 0")
#   soak      benchmarks/gpu_soak.py: per-process memory trend of a live daemon (SOAK_STREAMS, SOAK_MINUTES,
#             SOAK_TRACE=1 for tracemalloc reports under $OUT/soak/memtrace)
#   memory    benchmarks/source_memory.py: source workers' host and GPU memory per stream, 16 and 64 1080p
#             NVDEC streams, a process per stream vs 8 a process (MEMORY_STREAMS, MEMORY_PER_PROCESS)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
SITE=${SITE:-.whl-gpu/site.tar.xz}  # or .whl-gpu/site-lite.tar.xz: no PyAV/PyNvVideoCodec, room for a model
if [ ! -f /tmp/site/.unpacked ]; then
    mkdir -p /tmp/site && tar xJf "$SITE" -C /tmp/site && touch /tmp/site/.unpacked || { echo "cannot unpack $SITE"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD
export YOLOSTREAM_CACHE=/tmp/yolostream-cache
# A compile cache brought back by an earlier call's save-cache stage (carry .whl-gpu/cache.tar.xz): a warm start.
if [ -f .whl-gpu/cache.tar.xz ] && [ ! -d "$YOLOSTREAM_CACHE/inductor" ]; then
    mkdir -p "$YOLOSTREAM_CACHE" && tar xJf .whl-gpu/cache.tar.xz -C "$YOLOSTREAM_CACHE" && echo "compile cache restored"
fi

with_mps() {  # run "$@" with a CUDA MPS control daemon up (pipe and logs under /tmp), then stop it
    export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
    mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
    nvidia-cuda-mps-control -d || { echo "MPS did not start"; return 1; }
    "$@"
    local rc=$?
    echo quit | nvidia-cuda-mps-control
    tail -2 "$CUDA_MPS_LOG_DIRECTORY/control.log"
    return $rc
}
export -f with_mps

stage() {
    case "$1" in
    env)
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
        echo "MPS control: $(command -v nvidia-cuda-mps-control || echo absent)"
        python -c "import av, cuda.bindings, PyNvVideoCodec, torch, onnx2torch, zmq
print('PyAV', av.__version__, '| cuda-bindings', cuda.bindings.__version__, '| torch', torch.__version__,
      '| PyNvVideoCodec', getattr(PyNvVideoCodec, '__version__', '?'))" ;;
    probe) python benchmarks/nvdec_probe.py ;;
    kernel) python -m pytest -p no:cacheprovider -q -rs tests/preprocess/test_cuda_kernel.py tests/transport/test_cuda_ring.py ;;
    nvdec) python -m pytest -p no:cacheprovider -q -rs tests/sources/test_nvdec_source.py tests/sources/test_nvdec_fallback.py \
        tests/daemon/test_decoder_groups.py::test_nvdec_streams_share_one_process_and_resume_when_it_is_killed ;;
    engine) python -m pytest -p no:cacheprovider -q -rs tests/engine/test_torch_engine.py ;;
    accuracy) python benchmarks/gpu_kernel_accuracy.py ;;
    decode) python benchmarks/gpu_decode.py --streams 1 4 8 16 --seconds 8 ;;
    pipeline)
        python benchmarks/gpu_pipeline.py --streams 16 --batch 16 --seconds 20 --log "$OUT/daemon-fp32.log" &&
        python benchmarks/gpu_pipeline.py --streams 16 --batch 16 --seconds 20 --precision fp16 \
            --log "$OUT/daemon-fp16.log" ;;
    profile)  # cProfile of the workers (YOLOSTREAM_PROFILE): one NVDEC stream, then the fp16 daemon
        export YOLOSTREAM_PROFILE=$OUT/prof
        python benchmarks/gpu_decode.py --streams 1 --seconds 8
        python benchmarks/gpu_pipeline.py --streams 16 --batch 16 --seconds 12 --warmup 5 --precision fp16 \
            --log "$OUT/daemon-profile.log"
        for f in "$OUT"/prof/bench-source-0-*.prof "$OUT"/prof/bench-consumer-*.prof "$OUT"/prof/inference-*.prof \
                 $(ls "$OUT"/prof/source-s0-*.prof | head -1); do
            echo "--- $f"
            python -c "import pstats, sys; pstats.Stats(sys.argv[1]).sort_stats('tottime').print_stats(22)" "$f" |
                grep -v "^$" | tail -26
        done ;;
    fp16-mps)  # the fp16 daemon under CUDA MPS: one shared GPU context instead of 17 time-sliced ones
        with_mps python benchmarks/gpu_pipeline.py --streams 16 --batch 16 --seconds 20 --precision fp16 \
            --log "$OUT/daemon-fp16-mps.log" ;;
    fp16-contexts)  # fewer source processes (contexts), same batch: 4 streams x 4 frames per batch
        python benchmarks/gpu_pipeline.py --streams 4 --batch 16 --ring-slots 12 --seconds 20 --precision fp16 \
            --log "$OUT/daemon-fp16-4streams.log" ;;
    executor)  # the CUDA executor, the GPU candidate filter, the torch device engine (no PyAV needed)
        python -m pytest -p no:cacheprovider -q -rs tests/engine/test_cuda_executor.py tests/engine/test_torch_engine.py ;;
    real-accuracy)  # the GPU variants vs ONNX Runtime fp32 on yolov5s and tinycoco (carried in benchmarks/.cache)
        python benchmarks/gpu_accuracy.py --model benchmarks/.cache/yolov5s-coco.onnx \
            --images benchmarks/.cache/tinycoco --out "$OUT" ;;
    contention)  # the engine alone and the executor, idle vs beside 48 paced NVDEC streams (K per process)
        python benchmarks/gpu_contention.py --streams ${CONTENTION_STREAMS:-48} \
            --per-process ${CONTENTION_PER_PROCESS:-8 48 1 0} --no-copy --seconds 6 ;;
    memory)  # GPU and host memory per NVDEC stream: a process (and CUDA context) per stream vs shared
        python benchmarks/source_memory.py --streams ${MEMORY_STREAMS:-16 64} \
            --per-process ${MEMORY_PER_PROCESS:-1 8} --decoder nvdec --hd ;;
    soak)  # #18: SOAK_STREAMS (16) live NVDEC streams for SOAK_MINUTES (8); which process's memory grows
        python benchmarks/gpu_soak.py --streams ${SOAK_STREAMS:-16} --minutes ${SOAK_MINUTES:-8} --sample 20 \
            --warmup ${SOAK_WARMUP:-120} ${SOAK_TRACE:+--tracemalloc} --out "$OUT/soak" ;;
    live)  # live streams per GPU: 4 .. 64 realtime 1080p30 NVDEC streams, fp16 compiled, batch 16
        python benchmarks/gpu_live.py --streams ${LIVE_STREAMS:-4 16 32 48 64} --seconds ${LIVE_SECONDS:-60} \
            --warmup ${LIVE_WARMUP:-10} ${LIVE_PER_PROCESS:+--per-process $LIVE_PER_PROCESS} --out "$OUT" ;;
    pipeline-fp16)  # unpaced: the daemon vs the engine alone, fp16 compiled, 16 and 48 streams
        python benchmarks/gpu_pipeline.py --streams ${PIPELINE_STREAMS:-16 48} --batch 16 --seconds 15 --warmup 8 \
            --precision fp16 ${PIPELINE_PER_PROCESS:+--per-process $PIPELINE_PER_PROCESS} ${PIPELINE_ARGS:-} \
            --log "$OUT/daemon-pipeline.log" ;;
    contention-mps)  # the same under CUDA MPS: what decoding takes from the engine when no context time-slices
        with_mps python benchmarks/gpu_contention.py --streams ${CONTENTION_STREAMS:-48} \
            --per-process ${CONTENTION_PER_PROCESS:-8 0} --seconds 6 ;;
    mps-live)  # live streams under CUDA MPS (one GPU context for every process instead of one each)
        with_mps python benchmarks/gpu_live.py --streams ${LIVE_STREAMS:-32 48} --seconds ${LIVE_SECONDS:-30} \
            --warmup ${LIVE_WARMUP:-8} ${LIVE_PER_PROCESS:+--per-process $LIVE_PER_PROCESS} --batch ${LIVE_BATCH:-16} \
            --out "$OUT/${LIVE_OUT:-mps}" ;;
    pipeline-mps)  # unpaced under CUDA MPS, fp16 compiled, 16 and 48 streams
        with_mps python benchmarks/gpu_pipeline.py --streams ${PIPELINE_STREAMS:-16 48} --batch 16 --seconds 15 --warmup 8 \
            --precision fp16 ${PIPELINE_PER_PROCESS:+--per-process $PIPELINE_PER_PROCESS} ${PIPELINE_ARGS:-} \
            --log "$OUT/daemon-pipeline-mps.log" ;;
    pipeline-fp32)  # unpaced, fp32 compiled, 16 streams
        python benchmarks/gpu_pipeline.py --streams 16 --batch 16 --seconds 15 --warmup 8 --precision fp32 \
            ${PIPELINE_ARGS:-} --log "$OUT/daemon-pipeline-fp32.log" ;;
    eval-gpu)  # #13: `yolostream eval` through the daemon's GPU engine (torch, CUDA executor, CUDA letterbox
        # kernel) fp32 and fp16, the CPU letterbox, ONNX Runtime fp32 on the CPU; then `parity` fp16 vs fp32.
        # Needs benchmarks/.cache/{yolov5s-coco.onnx,tinycoco} and pycocotools in the (lite) site.
        python -c "import pycocotools" 2>/dev/null ||
            { echo "pycocotools is not importable: add its wheel to the site (../shared/device/wheels pycocotools)"; return 1; }
        # EVAL_QUICK=1: the served path only (no GPU tests, no CPU-letterbox eval, no host-letterbox parity)
        [ -n "${EVAL_QUICK:-}" ] || python -m pytest -p no:cacheprovider -q -rs tests/accuracy/test_eval_gpu.py
        local tc=benchmarks/.cache/tinycoco cfg=/tmp/eval-gpu.yaml
        printf 'model:\n  onnx: %s\nengine:\n  backend: torch\n  device: cuda\n  max_batch: 8\n  batch_sizes: [8]\nsources:\n  - id: x\n    url: x.mp4\n' \
            "$PWD/benchmarks/.cache/yolov5s-coco.onnx" > "$cfg"
        local run
        local runs=("ort-fp32-cpu --backend onnxruntime --device cpu" "gpu-fp32 --precision fp32" "gpu-fp16 --precision fp16")
        [ -n "${EVAL_QUICK:-}" ] || runs+=("gpu-fp32-cpu-letterbox --precision fp32 --preprocess cpu")
        for run in "${runs[@]}"; do
            set -- $run
            echo "--- eval $*"
            python -m streamer eval "$cfg" --coco $tc/annotations/instances_train2017.json \
                --images $tc/images/train2017 "${@:2}" --json "$OUT/eval-$1.json" || echo "eval $1 failed"
        done
        echo "--- parity torch/fp32 vs torch/fp16 (host letterbox), then both with the CUDA kernel (@cuda)"
        [ -n "${EVAL_QUICK:-}" ] || python -m streamer parity "$cfg" --images $tc/images/train2017 \
            --backends torch/fp32,torch/fp16 --out "$OUT/parity-fp16"
        python -m streamer parity "$cfg" --images $tc/images/train2017 \
            --backends torch/fp32@cuda,torch/fp16@cuda --out "$OUT/parity-fp16-cuda"
        python benchmarks/gpu_eval_table.py "$OUT" ;;
    save-cache)  # the compile caches (inductor, kernels) into $OUT/cache.tar.xz for the next call to carry
        tar cJf "$OUT/cache.tar.xz" -C "$YOLOSTREAM_CACHE" inductor kernels && ls -l "$OUT/cache.tar.xz" ;;
    variants)  # the torch engine's variants: eager / compiled per size / compiled dynamic, build time, img/s
        python benchmarks/torch_variants.py --variants eager compiled --max-batch 64 --sizes 1 4 16 64 \
            --out "$OUT" ;;
    *) echo "unknown stage $1"; return 2 ;;
    esac
}
export -f stage

declare -A LIMIT=([env]=60 [probe]=90 [kernel]=90 [nvdec]=200 [engine]=200 [accuracy]=200 [decode]=200
                  [pipeline]=330 [profile]=300
                  [fp16-mps]=200 [fp16-contexts]=200 [variants]=560
                  [executor]=200 [real-accuracy]=400 [live]=580
                  [pipeline-fp16]=330 [mps-live]=330 [pipeline-mps]=300
                  [pipeline-fp32]=560 [contention]=400 [contention-mps]=400 [soak]=590 [memory]=240 [save-cache]=60 [eval-gpu]=560)
SUMMARY=()
for name in "$@"; do
    start=$(date +%s)
    echo "=== $name" | tee "$OUT/$name.log"
    # timeout signals its whole process group: spawned workers and daemons go with the stage
    timeout -k 10 "${LIMIT[$name]:-120}" bash -c 'stage "$0"' "$name" 2>&1 | tee -a "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    last=$(grep -v '^\s*$' "$OUT/$name.log" | tail -1 | cut -c1-90)
    SUMMARY+=("$(printf '%-9s rc=%-3s %4ss  %s' "$name" "$rc" "$(( $(date +%s) - start ))" "$last")")
done
echo
echo "stage     result    time  last line"
printf '%s\n' "${SUMMARY[@]}"
