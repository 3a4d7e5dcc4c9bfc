"""Peak memory a run adds above its process baseline, per rank: what train/plan predicts.

The baseline is taken just before the model is built (after imports, the process group and the data): on a GPU
the allocator's peak counter is reset there and `max_memory_allocated` minus what was allocated then is the
run's own; on the CPU the kernel's resident-set high-water mark (VmHWM) is reset there (`/proc/self/clear_refs`),
so the ~1 GiB that torch and DeepSpeed hold after import, and anything the data pipeline freed before, do not
count. Where the reset is refused, the CPU falls back to ru_maxrss (peak since process start) minus the baseline,
which can only over-state the peak.

On the CPU, glibc keeps freed heap memory resident unless large allocations are mmapped; set
`MALLOC_MMAP_THRESHOLD_=131072` (benchmarks/plan_check.py does) for readings that follow the live tensors.
"""

from __future__ import annotations

import re
import resource

import torch

GIB = 2**30


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            m = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


class PeakMemory:
    """`added_gib()`: peak bytes above the baseline taken at construction, in GiB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.baseline = torch.cuda.memory_allocated(device)
            return
        self.hwm_reset = _reset_hwm()
        rss = _status_kib("VmRSS")
        self.baseline = rss * 1024 if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def peak_bytes(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        hwm = _status_kib("VmHWM") if self.hwm_reset else None
        return hwm * 1024 if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def added_gib(self) -> float:
        return max(0, self.peak_bytes() - self.baseline) / GIB


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False
