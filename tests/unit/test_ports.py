"""Ports handed to servers started later stay out of the kernel's ephemeral range."""

from __future__ import annotations

import socket

from dev.ports import _ephemeral_floor, free_port


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(10_000 <= port < _ephemeral_floor() for port in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))


def test_a_port_in_use_is_passed_over() -> None:
    with socket.socket() as held:
        port = free_port()
        held.bind(("127.0.0.1", port + 1))
        held.listen()
        assert port + 1 not in {free_port() for _ in range(3)}
