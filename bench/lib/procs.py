"""Child processes of a benchmark: start, pin to CPUs, read their CPU time and memory, stop.

Every process is started in a session of its own (so a Ctrl-C in the terminal reaches only the
benchmark, which then stops them in order) and registered with a `Children`, whose `stop_all()` runs in
a `finally`: SIGTERM to the child's process group, SIGKILL after a deadline.

Pinning uses `os.sched_setaffinity`: a child we spawn gets its CPU set in the forked child before
`exec` (so every thread it ever creates inherits it, like `taskset -c`); a process someone else started
(the cluster's routers, Redis) is pinned afterwards thread by thread (`/proc/<pid>/task/*`), with its
descendants (nginx workers). Failures never stop the benchmark: they are collected as notes.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Children",
    "Pinning",
    "busy_seconds",
    "cpu_jiffies",
    "cpu_seconds",
    "descendants",
    "memory_kb",
    "own_cpu_seconds",
    "plan_pinning",
    "wait_http",
]

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass
class Pinning:
    """Which CPUs the system under test and the load side get; `enabled` False means no pinning at all."""

    enabled: bool
    gateway: frozenset[int] | None = None  # the gateway (or the cluster's routers and nginx)
    load: frozenset[int] | None = None  # fake backend, wrk, Redis, admin API
    note: str = ""
    applied: dict[str, list[int]] = field(default_factory=dict)  # process label -> CPUs it ended up with
    failures: list[str] = field(default_factory=list)

    def cpus(self, side: str) -> frozenset[int] | None:
        if not self.enabled:
            return None
        return self.gateway if side == "gateway" else self.load

    def pin_tree(self, label: str, pid: int | None, side: str) -> None:
        """Pin a running process, all of its threads and its descendants; record what happened."""
        cpus = self.cpus(side)
        if cpus is None or pid is None:
            return
        for p in [pid, *descendants(pid)]:
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
            except OSError:
                tids = [p]
            for tid in tids:
                try:
                    os.sched_setaffinity(tid, cpus)
                except OSError as exc:
                    self.failures.append(f"{label}: pid {p} tid {tid}: {exc}")
        self.record(label, pid)

    def record(self, label: str, pid: int) -> None:
        with contextlib.suppress(OSError):
            self.applied[label] = sorted(os.sched_getaffinity(pid))

    def as_dict(self) -> dict:
        return {
            "enabled": self.enabled,
            "gateway_cpus": sorted(self.gateway) if self.gateway else None,
            "load_cpus": sorted(self.load) if self.load else None,
            "note": self.note,
            "applied": self.applied,
            "failures": self.failures,
        }


def plan_pinning(requested: bool) -> Pinning:
    """Gateway on the first CPU this process may use, everything else (the load side) on the others."""
    if not requested:
        return Pinning(False, note="pinning disabled (--no-pin): the OS schedules every process on any core")
    if not hasattr(os, "sched_setaffinity"):
        return Pinning(False, note="pinning unavailable on this OS (no sched_setaffinity): processes float")
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return Pinning(False, note=f"pinning skipped: only {len(allowed)} CPU available; processes share it")
    try:  # a no-op that fails the same way pinning a child would (seccomp, restricted containers)
        os.sched_setaffinity(0, set(allowed))
    except OSError as exc:
        return Pinning(False, note=f"pinning failed ({exc}): processes float")
    gateway, load = frozenset(allowed[:1]), frozenset(allowed[1:])
    return Pinning(
        True,
        gateway,
        load,
        note=(
            f"gateway (or routers + nginx) on CPU {_fmt(gateway)}; fake backend, wrk, Redis and admin API "
            f"on CPU {_fmt(load)}, for the direct and the gateway runs alike (os.sched_setaffinity)"
        ),
    )


def _fmt(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def descendants(pid: int) -> list[int]:
    """Pids of every live descendant of `pid` (scans /proc; empty where there is no /proc)."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all of its threads), in seconds, from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields[0] is field 3 (state); utime is field 14
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def own_cpu_seconds() -> float:
    """CPU time of this process plus its waited-for children (a finished wrk run), in seconds."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_jiffies() -> dict[int, tuple[int, int]]:
    """Per CPU (busy, total) clock ticks since boot, from /proc/stat; empty where there is none."""
    out: dict[int, tuple[int, int]] = {}
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in values[:8])
        busy = user + nice + system + irq + softirq + steal
        out[int(name[3:])] = (busy, busy + idle + iowait)
    return out


def busy_seconds(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpus: Iterable[int]
) -> tuple[float, float]:
    """(busy, elapsed) CPU seconds of the given CPUs between two `cpu_jiffies()` readings."""
    busy = total = 0
    for c in cpus:
        if c in before and c in after:
            busy += after[c][0] - before[c][0]
            total += after[c][1] - before[c][1]
    return busy / _CLK_TCK, total / _CLK_TCK


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll a GET until it answers 200; fail early, with the log's tail, if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode} while starting{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s{_tail(log)}")


def _tail(log: Path | None, lines: int = 20) -> str:
    if log is None:
        return ""
    try:
        return "; log:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Children:
    """The processes a benchmark started itself; `stop_all()` stops every one that is still running."""

    def __init__(self, pinning: Pinning) -> None:
        self.pinning = pinning
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def spawn(
        self,
        label: str,
        args: Sequence[str],
        *,
        side: str,
        log: Path | None = None,
        env: Mapping[str, str] | None = None,
        capture: bool = False,
    ) -> subprocess.Popen[bytes]:
        cpus = self.pinning.cpus(side)

        def _pin() -> None:  # runs in the forked child before exec: every later thread inherits it
            if cpus is not None:
                os.sched_setaffinity(0, cpus)

        with contextlib.ExitStack() as stack:
            if capture:
                out, err = subprocess.PIPE, subprocess.PIPE
            elif log is not None:  # the child inherits the file; ours is closed on leaving the block
                out, err = stack.enter_context(open(log, "ab")), subprocess.STDOUT
            else:
                out, err = subprocess.DEVNULL, subprocess.DEVNULL
            popen = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=dict(env) if env is not None else None,
                start_new_session=True,
                preexec_fn=_pin if cpus is not None else None,  # the harness runs no threads
            )
        self._procs.append((label, popen))
        if cpus is not None:
            self.pinning.record(label, popen.pid)
        return popen

    def stop(self, popen: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGTERM)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait(5)
        self._procs = [(label, p) for label, p in self._procs if p is not popen]

    def stop_all(self) -> None:
        """Newest first: the gateway before the backend and Redis it uses."""
        for _label, popen in reversed(list(self._procs)):
            self.stop(popen)
