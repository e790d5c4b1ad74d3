"""What this machine's CPU is and can do, read once from ``/proc/cpuinfo``."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

CPUINFO = "/proc/cpuinfo"


@functools.lru_cache(maxsize=8)
def cpu_info(path: str | Path = CPUINFO) -> tuple[str | None, frozenset[str] | None]:
    """The first CPU's model name and flags from a cpuinfo file (``None`` where unreadable)."""
    model, flags = None, None
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            model = value.strip()
        elif key.strip() == "flags":
            flags = frozenset(value.split())
            break
    return model, flags


def is_x86() -> bool:
    """Whether this machine is an x86 (32- or 64-bit) one."""
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
