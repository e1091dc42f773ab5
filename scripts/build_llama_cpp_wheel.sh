#!/usr/bin/env bash
# Build llama-cpp-python once per machine and keep the wheel outside the clone, so a fresh
# checkout (and CI) installs it in seconds instead of compiling for minutes.
#
# The default flags build for the instruction sets this CPU reports (/proc/cpuinfo), WITHOUT AMX:
# a native build's AMX kernels fault (SIGILL) in some VMs as soon as a quantized model evaluates
# more than one token, and a fixed AVX-512 list faults on CPUs without one of its extensions
# (seen: avx512_bf16 and avx_vnni missing on a Xeon that has the rest). The cache is keyed by
# that set, so a wheel is never reused on a CPU it was not built for.
# For a CUDA build: LLAMA_FLAVOR=cuda LLAMA_CMAKE_ARGS="-DGGML_CUDA=ON" scripts/build_llama_cpp_wheel.sh
set -euo pipefail
VERSION="${LLAMA_CPP_VERSION:-0.3.36}"
PY="${PYTHON:-python3}"
cpu_args() {
  local flags
  flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
  if [ "$flags" = "  " ]; then echo "-DGGML_NATIVE=ON"; return; fi  # not Linux: the compiler's native set (no Intel AMX there)
  local args="-DGGML_NATIVE=OFF" pair
  for pair in avx:AVX avx2:AVX2 fma:FMA f16c:F16C bmi2:BMI2 avx512f:AVX512 avx512vbmi:AVX512_VBMI \
              avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
    case "$flags" in *" ${pair%%:*} "*) args="$args -DGGML_${pair#*:}=ON" ;; esac
  done
  echo "$args"
}
DEFAULT_ARGS="$(cpu_args)"
FLAVOR="${LLAMA_FLAVOR:-cpu-noamx-$(echo "${LLAMA_CMAKE_ARGS:-$DEFAULT_ARGS}" | cksum | cut -d' ' -f1)}"
CACHE="${EXPO_WHEEL_CACHE:-$HOME/.cache/expo-gguf/wheels}/$FLAVOR"
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
