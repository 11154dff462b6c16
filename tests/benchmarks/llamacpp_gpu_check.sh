#!/usr/bin/env bash
# The llama.cpp backend's GPU check: expert placement (cpu_moe) on a CUDA build.
#
#   bash tests/benchmarks/llamacpp_gpu_check.sh prepare   # here: fills .gpu-carry/ (~17 MB)
#   bash tests/benchmarks/llamacpp_gpu_check.sh run       # on the GPU machine (no network)
#   (or `build`, then `check`, as two calls on the same warm machine if one call is too short)
#
# `prepare` packs what the GPU machine lacks and cannot download: llama-cpp-python's source
# (the sdist the tests already keep under .itamae-cache/, without llama.cpp's docs, models
# and tests, to fit a 64 MiB transfer), the gguf wheel, and Qwen2's vocabulary GGUF that
# the benchmark's synthetic model uses. `run` builds llama-cpp-python with CUDA for the
# GPU it finds, then runs tests/test_llamacpp_gpu.py and the decode benchmark with all
# blocks on the GPU, with every block's experts in CPU RAM (--cpu-moe), and CPU-only.
# Figures land in $OUT (or ./gpu-results) as JSON and the pytest log.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=.gpu-carry  # carried to the GPU machine (run's `carry`), replaced there on each call
DIST=.gpu-build   # built there, kept between calls on the same warm machine (never carried)
VERSION=0.3.36
SDIST=.itamae-cache/llama-cpp-sdist

prepare() {
    mkdir -p "$CARRY/wheels"
    for ignored in "/$CARRY/" "/$DIST/"; do
        grep -qx "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >>.git/info/exclude
    done
    .venv/bin/python -c "import tests.fixtures.llamacpp_reference as r; r.llama_cpp_source()"
    tar -C "$SDIST" -czf "$CARRY/llama-cpp-python-src.tgz" --exclude="*/.git" \
        --exclude="*/vendor/llama.cpp/tools/ui" --exclude="*/vendor/llama.cpp/tools/mtmd/*.mp4" \
        --exclude="*/vendor/llama.cpp/models" --exclude="*/vendor/llama.cpp/docs" \
        --exclude="*/vendor/llama.cpp/tests" --exclude="*/vendor/llama.cpp/benches" \
        --exclude="*/vendor/llama.cpp/examples" --exclude="*/vendor/llama.cpp/media" \
        --exclude="*/vendor/llama.cpp/conversion" --exclude="*/vendor/llama.cpp/gguf-py" \
        "llama_cpp_python-$VERSION"
    cp "$SDIST/llama_cpp_python-$VERSION/vendor/llama.cpp/models/ggml-vocab-qwen2.gguf" "$CARRY/"
    .venv/bin/python -m pip download -q --no-deps gguf==0.19.0 diskcache -d "$CARRY/wheels"
    du -sh "$CARRY"
}

build() {
    # a CUDA wheel of llama-cpp-python under .gpu-build/ (ignored, so a second call on the
    # same warm machine finds it), installed into the machine's python3
    local arch
    python3 -m pip install -q --no-deps "$CARRY"/wheels/*.whl
    if ! ls "$DIST"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d .)
        mkdir -p /tmp/llcpp && tar -C /tmp/llcpp -xzf "$CARRY/llama-cpp-python-src.tgz"
        # one GPU architecture, no llava: minutes instead of tens of minutes on 16 cores
        CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch -DLLAVA_BUILD=OFF" \
        CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
            python3 -m pip wheel -q --no-deps --no-build-isolation -w "$DIST" \
            "/tmp/llcpp/llama_cpp_python-$VERSION"
    fi
    python3 -m pip install -q --no-deps --force-reinstall "$DIST"/llama_cpp_python-*.whl
    python3 -c "import llama_cpp; assert llama_cpp.llama_supports_gpu_offload(), 'no GPU offload'"
}

check() {
    local out="${OUT:-gpu-results}"
    mkdir -p "$out"
    python3 -c "import llama_cpp; assert llama_cpp.llama_supports_gpu_offload()" 2>/dev/null || build
    export ITAMAE_LLAMA_VOCAB_DIR="$PWD/$CARRY"
    python3 -m pytest tests/test_llamacpp_gpu.py -v -s -p no:cacheprovider 2>&1 | tee "$out/gpu_tests.log"
    local bench="python3 -m tests.benchmarks.bench_llamacpp_overhead --gen-tokens 128 --rounds 2 --json"
    $bench --gpu-layers 99 --threads 8 >"$out/bench_gpu_all.json"
    $bench --gpu-layers 99 --cpu-moe --threads 8 >"$out/bench_gpu_cpu_moe.json"
    $bench --gpu-layers 0 --threads 8 --gen-tokens 64 >"$out/bench_cpu_only.json"
    python3 -m engine.memory_plan .itamae-cache/llamacpp/bench-moe-1b-q8_0.gguf >"$out/plan.txt"
    tail -n +1 "$out"/*.json "$out/plan.txt"
}

run() {
    build
    check
}

"${1:-run}"
