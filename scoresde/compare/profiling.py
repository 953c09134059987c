"""Wall time and peak memory of one call, for the comparison harness and the benchmarks.

Kept out of ``import scoresde`` and ``import scoresde.compare``: the package imports this
module only when a sweep times its first run (or when :func:`timed_call` is asked for), so
the ``/proc`` readers and glibc's ``malloc_trim`` never load with the package.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable

import torch

__all__ = ["MEMORY_MODES", "timed_call"]

#: The ``memory`` modes of :func:`timed_call` (and of :func:`~scoresde.compare.run_comparison`).
MEMORY_MODES: tuple[str, ...] = ("rss", "tracemalloc", "none")


def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return None
    return None  # pragma: no cover


def _reset_rss_peak() -> int | None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``), reset the process's peak RSS
    (Linux ``clear_refs``) and return the current RSS; None where that is not possible."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:  # pragma: no cover - not Linux, or not permitted
        return None
    return _proc_status("VmRSS")


def check_memory_mode(memory) -> str:
    """``memory`` if it is one of :data:`MEMORY_MODES`, else a ``ValueError`` naming them."""
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    return memory


def timed_call(fn: Callable[[], object], device: torch.device | str | None = None,
               memory: str = "rss") -> tuple[object, dict]:
    """Call ``fn()`` and measure its wall time and peak memory.

    Parameters
    ----------
    fn : callable
        Called once without arguments.
    device : torch.device or str, optional
        Where the work happens. On CUDA the time is taken after a synchronisation and the peak
        is :func:`torch.cuda.max_memory_allocated` above the memory allocated before the call
        (``mem_method = "cuda"``), whatever ``memory`` says (except ``"none"``).
    memory : {"rss", "tracemalloc", "none"}
        How to measure memory on the CPU. ``"rss"``: the growth of the process's peak resident
        set during the call (Linux; freed heap memory is first returned to the OS with glibc's
        ``malloc_trim`` so that the allocator's cache does not hide the growth) — no effect on
        the timing. ``"tracemalloc"``: in addition, the :mod:`tracemalloc` peak of the call,
        which sees Python and NumPy allocations only (torch's CPU allocator is invisible to it)
        and slows Python-heavy loops by up to ~1.5x, inflating ``wall_time_s``. ``"none"``.

    Returns
    -------
    result : object
        What ``fn`` returned.
    info : dict
        ``wall_time_s``, ``peak_mem_bytes``, ``mem_method`` (``"cuda"``, ``"rss"``, or
        ``"tracemalloc"`` where RSS is unavailable) and ``tracemalloc_peak_bytes``; ``None``
        where not measured.

    Examples
    --------
    >>> from scoresde.compare import timed_call
    >>> result, info = timed_call(lambda: sum(range(1000)), memory="none")
    >>> result, info["wall_time_s"] > 0, info["peak_mem_bytes"]
    (499500, True, None)
    """
    check_memory_mode(memory)
    device = torch.device(device) if device is not None else torch.device("cpu")
    info = {"wall_time_s": None, "peak_mem_bytes": None, "mem_method": None,
            "tracemalloc_peak_bytes": None}
    if device.type == "cuda":  # pragma: no cover - no GPU in the test suite
        torch.cuda.synchronize(device)
        if memory != "none":
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize(device)
        info["wall_time_s"] = time.perf_counter() - start
        if memory != "none":
            info["peak_mem_bytes"] = int(torch.cuda.max_memory_allocated(device) - base)
            info["mem_method"] = "cuda"
        return result, info
    if memory == "none":
        start = time.perf_counter()
        result = fn()
        info["wall_time_s"] = time.perf_counter() - start
        return result, info
    trace = memory == "tracemalloc"
    started = trace and not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        rss0 = _reset_rss_peak()
        if trace:
            tracemalloc.reset_peak()
            tm0 = tracemalloc.get_traced_memory()[0]
        start = time.perf_counter()
        result = fn()
        info["wall_time_s"] = time.perf_counter() - start
        if trace:
            info["tracemalloc_peak_bytes"] = max(0, tracemalloc.get_traced_memory()[1] - tm0)
        hwm = _proc_status("VmHWM") if rss0 is not None else None
    finally:
        if started:
            tracemalloc.stop()
    if hwm is not None:
        info["peak_mem_bytes"] = max(0, hwm - rss0)
        info["mem_method"] = "rss"
    elif trace:  # pragma: no cover - not Linux
        info["peak_mem_bytes"] = info["tracemalloc_peak_bytes"]
        info["mem_method"] = "tracemalloc"
    return result, info
