"""Free loopback ports for the test and bench scripts' clusters.

A port that binding port 0 answers comes from the kernel's ephemeral range,
the range every outgoing connection also draws its local port from. A
cluster started later (after minutes of benchmark connections) then finds
its port taken and the node exits at start. So ports are picked outside that
range (from port 20000 up, below it sit well-known services), checked free
by binding, and never handed out twice by one process: as the Rust tests'
`free_ports` does.
"""

import random
import socket

_given = set()


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(x) for x in f.read().split())
            return low, high
    except (OSError, ValueError):
        return 32768, 60999


def _is_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port():
    """A loopback port free now, outside the ephemeral range, not given before."""
    low, high = _ephemeral_range()
    if low > 21000:
        pool = (20000, low - 1)
    elif high < 63000:
        pool = (high + 1, 65535)
    else:
        pool = None
    for _ in range(200):
        if pool is None:
            break
        port = random.randint(*pool)
        if port not in _given and _is_free(port):
            _given.add(port)
            return port
    # No room outside the ephemeral range: fall back on the kernel's choice.
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port
