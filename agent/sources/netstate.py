"""TCP state from procfs: /proc/PID/net/tcp{,6} joined with /proc/PID/fd socket inodes.

Used at start-up (connections and listeners that existed before the agent), and to turn
an accept's file descriptor into its 4-tuple. Each network namespace has its own tables,
read through any process inside it.
"""

from __future__ import annotations

import ipaddress
import os
import struct
from dataclasses import dataclass

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1",
              5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK",
              10: "LISTEN", 11: "CLOSING"}
ESTABLISHED, LISTEN = 1, 10


@dataclass(frozen=True, slots=True)
class Socket:
    """One row of a /proc/net/tcp table."""

    local: str
    lport: int
    remote: str
    rport: int
    state: int
    inode: int
    family: str


def _hex_addr(text: str) -> str:
    # the kernel prints each 32-bit word in host (little-endian) byte order
    raw = bytes.fromhex(text)
    words = b"".join(struct.pack("<I", struct.unpack(">I", raw[i:i + 4])[0])
                     for i in range(0, len(raw), 4))
    if len(words) == 4:
        return str(ipaddress.IPv4Address(words))
    addr = ipaddress.IPv6Address(words)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped else str(addr)


def parse_tcp_table(text: str, family: str) -> list[Socket]:
    """Rows of /proc/net/tcp or tcp6; malformed rows are skipped."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        try:
            laddr, lport = f[1].split(":")
            raddr, rport = f[2].split(":")
            out.append(Socket(_hex_addr(laddr), int(lport, 16), _hex_addr(raddr),
                              int(rport, 16), int(f[3], 16), int(f[9]), family))
        except (ValueError, struct.error):
            continue
    return out


class NetState:
    """Reads TCP tables and socket inodes under a procfs root."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root.rstrip("/") or "/"

    def tables(self, pid: int) -> list[Socket]:
        """Every TCP socket of the network namespace `pid` lives in."""
        out: list[Socket] = []
        for name, family in (("tcp", "ipv4"), ("tcp6", "ipv6")):
            try:
                with open(f"{self.root}/{pid}/net/{name}", encoding="ascii", errors="replace") as f:
                    out.extend(parse_tcp_table(f.read(), family))
            except OSError:
                continue
        return out

    def socket_inodes(self, pid: int) -> dict[int, int]:
        """fd -> socket inode for the sockets a process holds."""
        out: dict[int, int] = {}
        fd_dir = f"{self.root}/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            return out
        for name in names:
            try:
                link = os.readlink(f"{fd_dir}/{name}")
            except OSError:
                continue
            if link.startswith("socket:["):
                out[int(name)] = int(link[8:-1])
        return out

    def socket_of_fd(self, pid: int, fd: int) -> Socket | None:
        """The TCP socket behind a process's file descriptor, if it is one."""
        try:
            link = os.readlink(f"{self.root}/{pid}/fd/{fd}")
        except OSError:
            return None
        if not link.startswith("socket:["):
            return None
        inode = int(link[8:-1])
        for s in self.tables(pid):
            if s.inode == inode:
                return s
        return None
