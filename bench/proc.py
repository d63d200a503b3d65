"""CPU time and memory of a process tree, read from /proc (Linux only)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself contain spaces or ")".
    return raw[raw.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (including children they already reaped)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            # Fields 14-17 of stat(5): utime, stime, cutime, cstime.
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


def run_delay_seconds(pids: list[int]) -> float:
    """Time these processes' threads spent runnable but waiting for a CPU.

    On a shared machine this shows when something else took the core: the
    second field of /proc/<pid>/task/<tid>/schedstat, in nanoseconds.
    """
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except (FileNotFoundError, ProcessLookupError):
            continue
        for tid in tasks:
            try:
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
    return total / 1e9


@dataclass
class Memory:
    rss_kb: int
    pss_kb: int


def memory(pids: list[int]) -> Memory:
    rss = pss = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in lines:
            name, _, rest = line.partition(":")
            if name == "Rss":
                rss += int(rest.split()[0])
            elif name == "Pss":
                pss += int(rest.split()[0])
    return Memory(rss, pss)


def self_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def tcp_ports(pid: int) -> set[tuple[int, int]]:
    """(local port, remote port) of every TCP socket this process holds open.

    Which worker serves a client socket, or owns a Redis connection, is the
    one whose descriptors include that socket's inode (/proc/<pid>/fd) in
    the namespace's table (/proc/<pid>/net/tcp{,6}).
    """
    inodes: set[str] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return set()
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                local, remote = fields[1], fields[2]
                found.add((int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16)))
    return found
