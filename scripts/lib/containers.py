"""What the container benchmarks share (bench/partial-connectivity,
bench/zones, and bench/vs-etcd's plot): running a command, a free Docker
/24, matplotlib installed on demand, and iptables rules inside a
container's network namespace (entered with nsenter)."""

import ipaddress
import subprocess
import sys


def run(argv, **kwargs):
    """Runs `argv`; its standard output, or CalledProcessError."""
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True, **kwargs).stdout


def free_subnet(second_octet):
    """A /24 under 10.<second_octet> that no Docker network overlaps."""
    used = set()
    for network in run(["docker", "network", "ls", "-q"]).split():
        for subnet in run(["docker", "network", "inspect", "-f",
                           "{{range .IPAM.Config}}{{.Subnet}} {{end}}", network]).split():
            used.add(ipaddress.ip_network(subnet, strict=False))
    for third in range(0, 256):
        candidate = ipaddress.ip_network(f"10.{second_octet}.{third}.0/24")
        if not any(candidate.overlaps(u) for u in used):
            return candidate
    raise SystemExit(f"no free /24 under 10.{second_octet}")


def ensure_matplotlib(log):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log("installing matplotlib with pip")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "matplotlib"], check=True)


def drop_rule(pid, action, source):
    """Adds (`-A`) or deletes (`-D`) a rule, in the network namespace of the
    process `pid` (a container's), that drops what comes from `source`."""
    run(["nsenter", "-t", str(pid), "-n", "iptables", action, "INPUT", "-s", source, "-j", "DROP"])
