"""Peak memory of the processes of a search (the driver, the teacher's task, each trial, the plain students),
so a run on large data says what it needed (``run.json`` -> ``peak_memory``, the summary)."""

from __future__ import annotations

import resource
import sys

GB = 2**30


def peak_memory(device: str = "cpu") -> dict:
    """This process's peak resident memory and, on CUDA, the peak its tensors held on the GPU (GB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    peak = {"peak_rss_gb": round(rss / GB, 3)}
    if str(device).startswith("cuda"):
        import torch

        peak["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / GB, 3)
    return peak


def largest(rows, key: str) -> float | None:
    """The largest ``key`` over ``rows`` (dicts, or a DataFrame's records), None when no row has it."""
    values = [float(r[key]) for r in rows if r.get(key) is not None and r.get(key) == r.get(key)]
    return max(values) if values else None


def describe(peak: dict) -> str:
    """One line for the summary."""
    names = {"driver_rss_gb": "driver", "teacher_rss_gb": "teacher task", "teacher_gpu_gb": "teacher on GPU",
             "trial_rss_gb": "largest trial process", "trial_gpu_gb": "largest trial on GPU",
             "plain_rss_gb": "largest plain student process"}
    parts = [f"{names[k]} {v:.2f} GB" for k, v in peak.items() if k in names and v is not None]
    return "Peak memory: " + ", ".join(parts)
