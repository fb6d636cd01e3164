"""What each variant buys: artefact size, resident weights, peak memory, load time and speed,
measured in the same run as the quality numbers and shown as ratios to the baseline.

Timings depend on the machine and on what else runs on it, so they are only compared within one
run. The speed probe feeds a fixed neutral text (never task text) through the engine the way a
server would: one prefill of the prompt, then greedy decoding steps from the KV cache, logits of
the last position only.
"""

from __future__ import annotations

import ctypes
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from qeval.types import (
    Artefact, Decision, Efficiency, EfficiencyProbe, SpeedPoint, TaskVerdict, VariantSpec,
)

if TYPE_CHECKING:
    from qeval.engines.base import Backend
    from qeval.vram import ModelShape

# Neutral, non-clinical filler: the probe's token ids must never come from a task (PHI).
PROBE_TEXT = (
    "The committee met on a Tuesday to review the schedule for the coming quarter. Each team "
    "described its progress, the open questions and the resources it would need. The minutes "
    "list twelve actions, three of them urgent, and the next meeting is set for the first week "
    "of the following month. Numbers in the report were rounded to two decimal places. "
)


# ---------------------------------------------------------------- memory


class MemoryMeter(Protocol):
    kind: str

    def start(self) -> int | None:
        """Reset the peak; return the memory in use now."""
        ...

    def peak(self) -> int | None:
        """The peak since start()."""
        ...


def _status_kib(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 if m else None


MADV_PAGEOUT = 21  # Linux ≥ 5.4: reclaim these pages now (clean file pages are simply dropped)
WEIGHT_FILES = (".safetensors", ".gguf", ".bin")


def _page_out_weight_files(libc) -> None:
    """Drop the resident pages of memory-mapped weight files. Loading reads the whole checkpoint
    (a quantize-on-load variant reads the full-precision one), and those pages would stay in the
    RSS, as if the variant needed them; tensors still backed by the file page back in on use,
    so what is counted afterwards is what scoring touches."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for line in maps:
        parts = line.split()
        if len(parts) < 6 or not parts[-1].endswith(WEIGHT_FILES):
            continue
        start, end = (int(x, 16) for x in parts[0].split("-"))
        libc.madvise(start, end - start, MADV_PAGEOUT)


class ProcessRss:
    """Resident set size of this process; Linux resets its high-water mark (VmHWM) when "5" is
    written to /proc/self/clear_refs, so each variant gets a peak of its own."""

    kind = "peak RSS of the process (Linux VmHWM, reset before loading)"

    def __init__(self):
        self.resettable = True

    def start(self) -> int | None:
        # Freed memory the allocator still holds would count as this variant's: collect it and
        # hand it back to the system first (glibc's malloc_trim; elsewhere nothing to do).
        import gc

        gc.collect()
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.malloc_trim(0)
            _page_out_weight_files(libc)
        except (OSError, AttributeError):
            pass
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.resettable = False
            self.kind = "not measured (no resettable VmHWM on this system)"
        return _status_kib("VmRSS")

    def peak(self) -> int | None:
        return _status_kib("VmHWM") if self.resettable else None


class CudaAllocated:
    """torch's allocator on one GPU: what tensors held at the peak (the CUDA context excluded)."""

    kind = "CUDA peak allocated (torch allocator)"

    def __init__(self, device: str):
        self.device = device

    def start(self) -> int | None:
        import torch

        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> int | None:
        import torch

        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)


def meter_for(backend_name: str, device: str) -> MemoryMeter:
    # An engine whose GPU memory torch's allocator sees says so (TORCH_ALLOCATOR); llama.cpp on
    # a GPU allocates outside torch: the process RSS is what qeval can see there.
    from qeval.engines.registry import engine

    if device.startswith("cuda") and getattr(engine(backend_name), "TORCH_ALLOCATOR", False):
        return CudaAllocated(device)
    return ProcessRss()


# ---------------------------------------------------------------- speed


def probe_prompts(tokenize: Callable[[str], list[int]], length: int, batch: int) -> list[list[int]]:
    """`batch` different prompts of exactly `length` tokens, all cut from the neutral text."""
    ids = tokenize(PROBE_TEXT)
    if not ids:
        raise ValueError("the tokenizer returned no tokens for the probe text")
    while len(ids) < length + batch * 7:
        ids = ids + ids
    return [ids[7 * row: 7 * row + length] for row in range(batch)]


def measure_speed(backend: Backend, probe: EfficiencyProbe) -> tuple[SpeedPoint, ...]:
    """Prefill and decode tokens/s at batch 1 and at probe.batch: the best of `repeats` after a
    short warm-up (the first pass allocates caches and picks kernels)."""
    backend.time_forward(probe_prompts(backend.tokenize, min(16, probe.prompt_tokens), 1), 2)
    points = []
    for batch in (1, probe.batch):
        prompts = probe_prompts(backend.tokenize, probe.prompt_tokens, batch)
        runs = [backend.time_forward(prompts, probe.new_tokens) for _ in range(probe.repeats)]
        if any(r is None for r in runs):
            points.append(SpeedPoint(batch=batch, prefill_tok_s=None, decode_tok_s=None))
            continue
        prefill = min(r.prefill_s for r in runs)
        decode = min(r.decode_s for r in runs)
        points.append(SpeedPoint(
            batch=batch, prefill_tok_s=batch * probe.prompt_tokens / max(prefill, 1e-9),
            decode_tok_s=batch * probe.new_tokens / max(decode, 1e-9)))
    return tuple(points)


class Measurement:
    """Wraps one variant's time in the run: start() before loading, loaded() after, finish()
    once it has been scored and probed."""

    def __init__(self, meter: MemoryMeter, artefact: Artefact):
        self.meter = meter
        self.artefact = artefact
        self.before = meter.start()
        self.t0 = time.perf_counter()
        self.load_s = 0.0

    def loaded(self) -> None:
        self.load_s = time.perf_counter() - self.t0
        # Loading can peak far above what serving needs (a checkpoint read in full precision and
        # quantized on the way in): its peak is kept apart, then the meter starts again.
        self.load_peak = self.meter.peak()
        self.meter.start()

    def finish(self, speed: tuple[SpeedPoint, ...], scored_here: bool) -> Efficiency:
        return Efficiency(artefact=self.artefact, load_s=self.load_s, memory_kind=self.meter.kind,
                          memory_before_bytes=self.before, load_peak_bytes=self.load_peak,
                          peak_memory_bytes=self.meter.peak(), speed=speed, scored_here=scored_here)


# ---------------------------------------------------------------- the table


def plan_format(variant: VariantSpec, compute_dtype: str = "") -> str | None:
    """The planner's weight format for a variant as it was held, or None when it cannot know (a
    brought file, the fake backend): its method's (qeval/variants/) answer."""
    from qeval.methods import method

    return method(variant.method).plan_format(variant, compute_dtype)


def predicted_weight_bytes(variant: VariantSpec, shape: ModelShape | None, compute_dtype: str = ""
                           ) -> int | None:
    fmt = plan_format(variant, compute_dtype)
    if fmt is None or shape is None:
        return None
    from qeval.errors import QevalInputError
    from qeval.vram import plan

    try:
        return plan(shape, fmt=fmt, context=1, gpu_bytes=1).lines[0].bytes
    except QevalInputError:
        return None  # a GGUF type the planner has no figure for


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base <= 0:
        return None
    return value / base


def _speed(e: Efficiency, batch_is_one: bool) -> SpeedPoint | None:
    points = [s for s in e.speed if (s.batch == 1) == batch_is_one]
    return points[0] if points else None


def quality(candidate: str, comparisons: Sequence, verdicts: Sequence[TaskVerdict],
            per_candidate: dict[str, Decision]) -> dict:
    """The candidate's verdict and its worst accuracy change (lowest lower bound)."""
    deltas = [(c.delta.low, c.task, c.delta) for c in comparisons
              if c.candidate == candidate and hasattr(c, "delta")]
    worst = min(deltas, key=lambda d: (d[0], d[1])) if deltas else None
    return {"verdict": per_candidate[candidate].value,
            "worst_task": worst[1] if worst else None,
            "worst_delta": ({"estimate": worst[2].estimate, "low": worst[2].low, "high": worst[2].high}
                            if worst else None)}


def _row(role: str, variant: VariantSpec, info, e: Efficiency, params: int | None,
         shape: ModelShape | None) -> dict:
    def above_start(x: int | None) -> int | None:
        return None if x is None or e.memory_before_bytes is None else max(0, x - e.memory_before_bytes)

    # The KV cache's measured bytes: only for variants with `+kv=` (older tables stay as they were).
    kv = {} if getattr(info, "kv_cache_bytes", None) is None else {"kv_cache_bytes": info.kv_cache_bytes}
    return {
        **kv,
        "variant": variant.name, "role": role, "backend": info.backend, "device": info.device,
        "params": params, "bits_per_weight": 8 * info.weight_bytes / params if params else None,
        "artefact_bytes": e.artefact.bytes, "artefact": e.artefact.description,
        "weight_bytes": info.weight_bytes, "predicted_weight_bytes": predicted_weight_bytes(variant, shape, info.compute_dtype),
        "plan_format": plan_format(variant, info.compute_dtype),
        "peak_memory_bytes": above_start(e.peak_memory_bytes), "load_peak_bytes": above_start(e.load_peak_bytes),
        "process_peak_bytes": e.peak_memory_bytes,
        "memory_kind": e.memory_kind + "; above the process before loading",
        "load_s": e.load_s, "scored_here": e.scored_here, "speed": [s.model_dump() for s in e.speed],
    }


def _vs(row: dict, e: Efficiency, base_row: dict, base: Efficiency) -> dict:
    b1, bn, bb1, bbn = _speed(e, True), _speed(e, False), _speed(base, True), _speed(base, False)
    return {
        "weight_bytes": _ratio(row["weight_bytes"], base_row["weight_bytes"]),
        "artefact_bytes": _ratio(row["artefact_bytes"], base_row["artefact_bytes"]),
        "peak_memory": _ratio(row["peak_memory_bytes"], base_row["peak_memory_bytes"]),
        "load_s": _ratio(row["load_s"], base_row["load_s"]),
        "prefill_b1": _ratio(b1 and b1.prefill_tok_s, bb1 and bb1.prefill_tok_s),
        "decode_b1": _ratio(b1 and b1.decode_tok_s, bb1 and bb1.decode_tok_s),
        "prefill_bN": _ratio(bn and bn.prefill_tok_s, bbn and bbn.prefill_tok_s),
        "decode_bN": _ratio(bn and bn.decode_tok_s, bbn and bbn.decode_tok_s),
    }


def efficiency_table(runs: Sequence[tuple[str, VariantSpec, object]], *, probe: EfficiencyProbe,
                     shape: ModelShape | None, comparisons: Sequence, verdicts: Sequence[TaskVerdict],
                     per_candidate: dict[str, Decision]) -> dict:
    """results.json's `efficiency` section. `runs`: (role, variant, VariantRun), the baseline
    first; a run that was not measured is left out. Bits per weight use the baseline's parameter
    count (quantized tensors are packed)."""
    import os

    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    measured = [(role, v, run) for role, v, run in runs if run.efficiency is not None]
    params = runs[0][2].info.params
    base = runs[0][2].efficiency
    rows = []
    for role, variant, run in measured:
        row = _row(role, variant, run.info, run.efficiency, params, shape)
        if base is not None:
            row["vs_baseline"] = _vs(row, run.efficiency, rows[0] if rows else row, base)
        row["quality"] = (quality(variant.name, comparisons, verdicts, per_candidate)
                          if role == "candidate" else None)
        rows.append(row)
    return {"probe": {**probe.model_dump(), "batch_sizes": [1, probe.batch], "torch_threads": threads,
                      "cpu_count": os.cpu_count(), "text": "fixed neutral filler (no task text)"},
            "variants": rows}
