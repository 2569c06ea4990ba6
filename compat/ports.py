"""Picking free TCP ports for the servers we start (the CLI's embedded Ray, tests, benchmarks):
out of the ranges Ray and the kernel hand ports out from. Sockets only: no Ray, no server."""

from __future__ import annotations

import random
import socket
from collections.abc import Collection
from pathlib import Path

PICKED_PORTS = range(20000, 30000)
"""Where ``free_ports`` picks: above Ray's worker ports (10002-19999) and below the ports the kernel
hands out for port 0 (Linux: 32768-60999), whence come Ray's own servers, Serve's replica gRPC ports
and every outgoing connection. A port the kernel gave us before Ray started could go to one of those
before Serve bound it (seen in CI: "Failed to bind to address '127.0.0.1:42643'")."""


def free_ports(host: str, count: int, exclude: Collection[int] = ()) -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now, from ``PICKED_PORTS`` minus the kernel's
    ephemeral range and ``exclude`` (for a server started right after)."""
    low, high = ephemeral_range()
    excluded = set(exclude)
    candidates = [p for p in PICKED_PORTS if not low <= p <= high and p not in excluded]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    held: list[socket.socket] = []
    try:
        for port in random.sample(candidates, min(len(candidates), 200)):
            if len(held) == count:
                break
            s = socket.socket(family)
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            held.append(s)
        while len(held) < count:  # no candidate left: the kernel's choice
            held.append(socket.socket(family))
            held[-1].bind((host, 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for port 0 (``ip_local_port_range``; Linux's default without it)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999
