"""Port picking for the servers we start: out of the ranges Ray and the kernel take ports from."""

from __future__ import annotations

import socket

from compat.ports import PICKED_PORTS, ephemeral_range, free_ports


def test_free_ports_are_distinct_bindable_and_outside_the_kernels_range() -> None:
    low, high = ephemeral_range()
    for _ in range(20):
        ports = free_ports("127.0.0.1", 3, exclude=(20000, 20001))
        assert len(set(ports)) == 3
        for port in ports:
            assert port in PICKED_PORTS and not low <= port <= high
            assert port not in (20000, 20001)
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_skipped() -> None:
    (taken,) = free_ports("127.0.0.1", 1)
    with socket.socket() as held:
        held.bind(("127.0.0.1", taken))
        held.listen()
        others = [p for p in PICKED_PORTS if p != taken]
        # The one candidate left is in use: the kernel's choice instead.
        (port,) = free_ports("127.0.0.1", 1, exclude=others)
        assert port != taken
