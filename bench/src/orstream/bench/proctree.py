"""CPU time of process trees, read from ``/proc`` (Linux): a browser with its helper processes,
a service with the workers it forks.

A tree's CPU time is the sum over its live processes of user + system time, their own and that of
the children they have reaped (``cutime``/``cstime``), so a helper that exits between two readings
still counts: its time moves into its parent's. The difference of two readings is the CPU the tree
used in between, new processes included.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")
PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessStat:
    pid: int
    ppid: int
    #: The kernel's short name of the process (``comm``, at most 15 characters).
    name: str
    #: User + system time of the process and its reaped children, in seconds.
    cpu_s: float


def read_stat(pid: int) -> ProcessStat | None:
    """One process's ``/proc/<pid>/stat``, or None once it has gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'.
    name = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return ProcessStat(pid=pid, ppid=int(fields[1]), name=name, cpu_s=ticks / CLK_TCK)


def process_table() -> dict[int, ProcessStat]:
    """Every process this user can see, by pid."""
    table: dict[int, ProcessStat] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(ValueError, IndexError):
                stat = read_stat(int(entry.name))
                if stat is not None:
                    table[stat.pid] = stat
    return table


def descendants(table: dict[int, ProcessStat], root: int) -> set[int]:
    """``root`` and every process below it in ``table``."""
    children: dict[int, list[int]] = {}
    for stat in table.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    found: set[int] = set()
    todo = [root] if root in table else []
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def tree_cpu_s(table: dict[int, ProcessStat], roots: Iterable[int]) -> float:
    """CPU seconds of the trees under ``roots`` (each process counted once)."""
    pids: set[int] = set()
    for root in roots:
        pids |= descendants(table, root)
    return sum(table[pid].cpu_s for pid in pids)
