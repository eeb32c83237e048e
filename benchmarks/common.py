"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def repo_relative(arg: str) -> str:
    """An absolute path argument made relative to the repository, so recorded commands are not tied to the
    machine that ran them; any other argument unchanged."""
    if not os.path.isabs(arg):
        return arg
    try:
        return os.path.relpath(arg, REPO)
    except ValueError:  # another drive (Windows)
        return arg


def cpu_description() -> str:
    """Model name, CPU family/model and the vector extensions that decide fp32/bf16 speed, from /proc/cpuinfo.

    Two VMs both called 'AMD EPYC' differ by 12x in bf16 speed (AVX512-BF16 or not), so results name it.
    """
    import platform

    try:
        info = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    get = {k.strip(): v.strip() for k, v in fields.items()}.get
    flags = set((get("flags") or "").split())
    ext = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return (
        f"{get('model name') or platform.machine()} (family {get('cpu family')}, model {get('model')}), "
        f"{'/'.join(ext) or 'no AVX2'}, {os.cpu_count()} cores"
    )
