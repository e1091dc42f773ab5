#!/usr/bin/env bash
# Build llama-cpp-python once per machine and keep the wheel outside the clone, so a fresh
# checkout (and CI) installs it in seconds instead of compiling for minutes.
#
# The default flags build for AVX2/AVX-512 WITHOUT AMX: a native build's AMX kernels fault
# (SIGILL) in some VMs as soon as a quantized model evaluates more than one token.
# For a CUDA build: LLAMA_FLAVOR=cuda LLAMA_CMAKE_ARGS="-DGGML_CUDA=ON" scripts/build_llama_cpp_wheel.sh
set -euo pipefail
VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
FLAVOR="${LLAMA_FLAVOR:-cpu-noamx}"
CACHE="${EXPO_WHEEL_CACHE:-$HOME/.cache/expo-gguf/wheels}/$FLAVOR"
PY="${PYTHON:-python3}"
DEFAULT_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON"
mkdir -p "$CACHE"
if ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl >/dev/null 2>&1; then
  ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl
  exit 0
fi
echo "building llama-cpp-python $VERSION ($FLAVOR) into $CACHE: several minutes, once per machine" >&2
# --no-cache-dir: pip's wheel cache ignores CMAKE_ARGS and would hand back a native build
CMAKE_ARGS="${LLAMA_CMAKE_ARGS:-$DEFAULT_ARGS}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  "$PY" -m pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python \
  "llama-cpp-python==$VERSION" -w "$CACHE" >&2
ls "$CACHE"/llama_cpp_python-"$VERSION"-*.whl
