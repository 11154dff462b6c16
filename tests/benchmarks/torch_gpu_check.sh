#!/usr/bin/env bash
# The torch engine's GPU check: the CUDA fast tier, next-layer prefetch on a side stream,
# the overlapped CPU/GPU decode, and the hybrid benchmark against llama.cpp's --n-cpu-moe.
#
#   bash tests/benchmarks/torch_gpu_check.sh prepare   # here: fills .gpu-carry/ (~20 MB)
#   bash tests/benchmarks/torch_gpu_check.sh build     # there: llama-cpp-python with CUDA
#   bash tests/benchmarks/torch_gpu_check.sh check     # there, same warm machine: tests + bench
#   (`run` = build then check, for a machine where one 10-minute call holds both)
# The device tool's run needs `carry: [".gpu-carry"]` (ignored, so not copied otherwise);
# .gpu-build/ (the CUDA wheel) stays on a warm machine between build and check.
# Unrun so far: no GPU machine has been lent to the session that wrote it.
#
# The GPU machine has no network: it needs torch with CUDA, transformers and safetensors
# already (check refuses at once, saying which is missing). What it lacks and Itamae can
# carry comes from `prepare`: llamacpp_gpu_check.sh's carry (llama-cpp-python's source, the
# gguf wheel, Qwen2's vocabulary GGUF) plus the Qwen2 tokenizer folder the bench model's
# checkpoint is written with. `check` runs tests/test_torch_gpu.py (the tests marked gpu),
# bench_prefetch.py on CUDA (prediction and hit rates at 10/25/50/100%, demo and bench
# model) and bench_gpu_hybrid.py (torch engine decode vs llama.cpp at the same share of
# experts in VRAM). Figures land in $OUT (or ./gpu-results) as JSON and logs.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=.gpu-carry
LLAMA=tests/benchmarks/llamacpp_gpu_check.sh
SDIST=.itamae-cache/llama-cpp-sdist

prepare() {
    bash "$LLAMA" prepare
    "${PYTHON:-.venv/bin/python}" -c "import tests.fixtures.llamacpp_reference as r; r.vocabulary_tokenizer('qwen2')"
    tar -C "$SDIST" -czf "$CARRY/tokenizer-qwen2.tgz" tokenizer-qwen2
    du -sh "$CARRY"
}

build() {
    bash "$LLAMA" build
}

preflight() {
    python3 - <<'EOF'
import importlib, sys
missing = [m for m in ("torch", "transformers", "safetensors", "numpy", "llama_cpp")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing on this machine (cannot be downloaded here): {', '.join(missing)}")
import torch
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} sees no CUDA GPU")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
EOF
}

check() {
    local out="${OUT:-gpu-results}"
    mkdir -p "$out"
    preflight
    if [ -L .itamae-cache ] && [ ! -e .itamae-cache ]; then
        rm .itamae-cache  # the checkout's link to a shared cache that is not on this machine
    fi
    mkdir -p "$SDIST"
    tar -C "$SDIST" -xzf "$CARRY/tokenizer-qwen2.tgz"
    export ITAMAE_LLAMA_VOCAB_DIR="$PWD/$CARRY"
    python3 -m pytest tests/test_torch_gpu.py -m gpu -v -p no:cacheprovider 2>&1 | tee "$out/torch_gpu_tests.log"
    python3 -m tests.benchmarks.bench_prefetch --device cuda --threads 8 --gen-tokens 32 \
        --rounds 1 --json >"$out/bench_prefetch_cuda.json" 2> >(tee "$out/bench_prefetch_cuda.log" >&2)
    python3 -m tests.benchmarks.bench_gpu_hybrid --threads 8 --rounds 1 --json \
        >"$out/bench_gpu_hybrid.json" 2> >(tee "$out/bench_gpu_hybrid.log" >&2)
}

run() {
    build
    check
}

"${1:-run}"
