"""How many CPUs this process may use: the affinity mask, a container's CPU quota, or TSINFER_CPUS.

In a container the CPU budget is usually a quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`/`cpu.cfs_period_us`:
`docker run --cpus=2`, a Kubernetes CPU limit), not an affinity mask, so the affinity mask (and onnxruntime's own
thread default) sees every host core. Starting a lane or a thread per host core under a 2-CPU quota only gets the
process throttled. Everything that sizes itself by the machine (lanes, onnxruntime threads, tokenizer processes,
a local Ray's num_cpus) asks here, through infer.batching.usable_cores.

TSINFER_CPUS=N overrides both and wins as given, even above the affinity count (the user may know better, e.g. a
quota this module cannot read).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "TSINFER_CPUS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")
# v1 mounts the cpu controller under one of these names (often the cpu,cpuacct pair)
V1_CPU_DIRS = ("cpu,cpuacct", "cpu", "cpuacct,cpu")


class CpuBudgetError(ValueError):
    """TSINFER_CPUS is set but is not a positive integer: the message says so."""


@dataclass(frozen=True)
class CpuBudget:
    count: int
    source: str  # "affinity" | "cgroup v2 quota" | "cgroup v1 quota" | "TSINFER_CPUS"

    def as_dict(self) -> dict:
        return {"count": self.count, "source": self.source}


def affinity_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_budget(*, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP,
               environ: Mapping[str, str] = os.environ, affinity: int | None = None) -> CpuBudget:
    """The CPUs this process may use and where that number comes from.

    The override if set; else the smaller of the affinity count and the tightest quota of this process's cgroup and
    its parents (a quota rounded down, at least 1). A quota no tighter than the affinity mask leaves "affinity".
    cgroup_root, proc_cgroup, environ and affinity are for tests (a made-up cgroup tree, no root needed).
    """
    override = environ.get(ENV_VAR, "").strip()
    if override:
        try:
            count = int(override)
        except ValueError:
            count = 0
        if count < 1:
            raise CpuBudgetError(f"{ENV_VAR}={override!r} is not a positive integer: set it to the number of CPUs "
                                 f"to use (e.g. {ENV_VAR}=2), or unset it to count them")
        return CpuBudget(count, ENV_VAR)
    best = CpuBudget(affinity if affinity is not None else affinity_count(), "affinity")
    for quota in _quotas(cgroup_root, proc_cgroup):
        if quota.count < best.count:
            best = quota
    return best


def _quotas(cgroup_root: Path, proc_cgroup: Path) -> list[CpuBudget]:
    """Every CPU quota set on this process's cgroups (v2 and v1, each with its parents); none outside Linux."""
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        fields = line.split(":", 2)  # "0::/path" (v2) or "4:cpu,cpuacct:/path" (v1)
        if len(fields) != 3 or not fields[2]:
            continue
        _, controllers, path = fields
        if controllers == "":  # v2: one unified hierarchy mounted at the root
            found += [CpuBudget(n, "cgroup v2 quota") for d in _up_from(cgroup_root, path)
                      if (n := _v2_quota(d)) is not None]
        elif "cpu" in controllers.split(","):
            mounts = [controllers] + [m for m in V1_CPU_DIRS if m != controllers]
            mount = next((cgroup_root / m for m in mounts if (cgroup_root / m).is_dir()), None)
            if mount is not None:
                found += [CpuBudget(n, "cgroup v1 quota") for d in _up_from(mount, path)
                          if (n := _v1_quota(d)) is not None]
    return found


def _up_from(root: Path, path: str) -> list[Path]:
    """root/path and each parent up to root itself. The folders that do not exist are skipped: inside a container
    /proc/self/cgroup may name the host's path while the mount shows the container's own cgroup at root."""
    parts = [p for p in path.strip("/").split("/") if p and p not in (".", "..")]
    folders = [root.joinpath(*parts[:k]) for k in range(len(parts), -1, -1)]
    return [d for d in folders if d.is_dir()]


def _cpus(quota: int, period: int) -> int | None:
    """Whole CPUs of a quota, rounded down (1.5 CPUs run 1 lane without throttling, not 2), at least 1."""
    if quota <= 0 or period <= 0:
        return None
    return max(1, quota // period)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(folder: Path) -> int | None:
    text = _read(folder / "cpu.max")  # "max 100000" (no limit) or "200000 100000"
    fields = text.split() if text else []
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        return _cpus(int(fields[0]), int(fields[1]))
    except ValueError:
        return None


def _v1_quota(folder: Path) -> int | None:
    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")  # quota -1: no limit
    try:
        return _cpus(int(quota), int(period)) if quota and period else None
    except ValueError:
        return None


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo's names of the x86 bf16 units


def read_cpuinfo(path: str | Path = "/proc/cpuinfo") -> dict[str, str]:
    """The fields Linux lists for the first processor (vendor_id, model name, cpu family, model, cpu MHz, flags,
    ...); empty where there is no such list (other systems, an unreadable file)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():  # the first processor's block ends at its blank line
            if info:
                break
            continue
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def read_cpu_flags(path: str | Path = "/proc/cpuinfo") -> set[str] | None:
    """The x86 feature flags Linux lists for the CPU; None where there is no such list (other systems, ARM)."""
    return set(read_cpuinfo(path).get("flags", "").split()) or None
