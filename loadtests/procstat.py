"""CPU time of a server's processes, by role, read from ``/proc`` (Linux).

Servers are started as session leaders, so every process they spawn (Ray's gcs, raylet,
proxy, replicas) shares their session id; sampling before and after a cell gives the cores
each role used during it.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")

Sample = dict[int, tuple[str, float]]
"""pid -> (role, CPU seconds so far)."""


def role(cmdline: list[str]) -> str:
    """A short name for a process: Ray actors by their title (without the method Ray appends
    while one runs: ``ray::ServeReplica:app:Ingress.handle_request``), the rest by program."""
    first = cmdline[0] if cmdline else "?"
    if first.startswith("ray::"):
        title = first.split()[0][5:]
        if title.startswith("ServeReplica:"):
            deployment = title.split(":", 2)[-1].split(".", 1)[0]
            return "ingress" if deployment == "Ingress" else f"replica:{deployment}"
        actor = title.split(".", 1)[0]
        return {"ProxyActor": "proxy", "ServeController": "controller"}.get(actor, actor)
    args = [a for a in cmdline[1:] if not a.startswith("-") or a == "-m"]
    if Path(first).name.startswith("python") and args:
        return Path(args[1] if args[0] == "-m" and len(args) > 1 else args[0]).name
    return Path(first).name or "?"


def session_cpu(session: int) -> Sample:
    """Role and CPU seconds (user + system) of every live process in ``session``."""
    sample: Sample = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) != session:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / _TICKS
            raw = (entry / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # gone, or not ours to read
        cmdline = [a for a in raw.decode(errors="replace").split("\0") if a]
        sample[int(entry.name)] = (role(cmdline), seconds)
    return sample


def cores_used(before: Sample, after: Sample, wall_s: float) -> dict[str, float]:
    """Cores each role used between two samples, from per-process deltas (a process started in
    between counts from zero; one that ended in between is missed)."""
    if wall_s <= 0:
        return {}
    totals: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        delta = seconds - before.get(pid, (name, 0.0))[1]
        if delta > 0:
            totals[name] = totals.get(name, 0.0) + delta
    return {name: round(cpu / wall_s, 3) for name, cpu in sorted(totals.items())}
