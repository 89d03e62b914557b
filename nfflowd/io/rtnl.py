"""Routes, addresses and links of this network namespace, from rtnetlink
(pyroute2), as the plain messages of ``nfflowd.interfaces``.

``RtnlSocket``: subscribed to the link, IPv4/IPv6 address and IPv4/IPv6
route groups, non-blocking, for the daemon's select loop; ``read()`` gives
what is queued, and raises ``RtnlOverrun`` when the kernel dropped messages
(the caller dumps again).  ``dump()``: the whole state, on a socket of its
own, beginning with ``Reset()``.  Subscribe first, then dump: a change made
in between is in both, and applying it twice is harmless.
"""

from __future__ import annotations

import errno
import socket
import time

from pyroute2 import IPRSocket
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.rtnl import (RTM_DELADDR, RTM_DELLINK, RTM_DELROUTE, RTM_GETADDR,
                                   RTM_GETLINK, RTM_GETROUTE, RTM_NEWADDR, RTM_NEWLINK,
                                   RTM_NEWROUTE, RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE,
                                   RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from nfflowd.errors import NfflowdError
from nfflowd.interfaces import Address, Link, Reset, Route

GROUPS = (RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE
          | RTMGRP_IPV6_ROUTE)
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REPLACE = 0x100
IFF_UP = 0x1
NLM_F_DUMP_INTR = 0x10
_FAMILIES = {socket.AF_INET: (4, socket.AF_INET), socket.AF_INET6: (6, socket.AF_INET6)}
RECV_SIZE = 65536


class RtnlOverrun(NfflowdError):
    """The kernel dropped rtnetlink messages (ENOBUFS): dump again."""


def parse(msg):
    """One pyroute2 message as an ``interfaces`` message, or None (a kind
    or family not followed)."""
    t = msg["header"]["type"]
    if t in (RTM_NEWROUTE, RTM_DELROUTE):
        fam = _FAMILIES.get(msg["family"])
        if fam is None:
            return None
        dst = msg.get_attr("RTA_DST")
        oif = msg.get_attr("RTA_OIF")
        if oif is None:
            hops = msg.get_attr("RTA_MULTIPATH")
            # multipath: the first nexthop's interface (a flow takes one
            # of them; which one is the kernel's hash, not known here)
            oif = hops[0]["oif"] if hops else 0
        return Route(t == RTM_NEWROUTE, fam[0], msg.get_attr("RTA_TABLE") or msg["table"],
                     msg["type"], socket.inet_pton(fam[1], dst) if dst else b"",
                     msg["dst_len"], oif or 0, msg.get_attr("RTA_PRIORITY") or 0,
                     msg["tos"], bool(msg["header"]["flags"] & NLM_F_REPLACE))
    if t in (RTM_NEWADDR, RTM_DELADDR):
        fam = _FAMILIES.get(msg["family"])
        if fam is None:
            return None
        addr = (msg.get_attr("IFA_LOCAL") if fam[0] == 4 else None) or msg.get_attr("IFA_ADDRESS")
        if not addr:
            return None
        return Address(t == RTM_NEWADDR, fam[0], msg["index"], socket.inet_pton(fam[1], addr))
    if t in (RTM_NEWLINK, RTM_DELLINK):
        return Link(t == RTM_NEWLINK, msg["index"], msg.get_attr("IFLA_IFNAME") or "",
                    msg.get_attr("IFLA_IFALIAS") or "", bool(msg["flags"] & IFF_UP))
    return None


def _parse_all(msgs) -> list:
    return [m for m in map(parse, msgs) if m is not None]


class RtnlSocket:
    """The subscribed rtnetlink socket (see the module's docstring)."""

    def __init__(self, rcvbuf: int = 4 * 1024 * 1024):
        self._ipr = IPRSocket(groups=GROUPS, rcvbuf=rcvbuf)
        self._ipr.bind(groups=GROUPS)
        self._sock = self._ipr.socket
        self._sock.setblocking(False)
        self._marshal = self._ipr.marshal

    def fileno(self) -> int:
        return self._sock.fileno()

    def read(self, max_datagrams: int = 256) -> list:
        """What is queued (at most ``max_datagrams`` datagrams), parsed."""
        out = []
        for _ in range(max_datagrams):
            try:
                data = self._sock.recv(RECV_SIZE)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    raise RtnlOverrun("rtnetlink receive buffer overrun") from None
                raise
            out.extend(_parse_all(self._marshal.parse(data)))
        return out

    def close(self) -> None:
        self._ipr.close()


def dump(timeout: float = 10.0, attempts: int = 3) -> list:
    """``Reset()``, then every link, address and route of the namespace.  A
    dump the kernel marks interrupted (changed while dumped) is done again,
    up to ``attempts`` times."""
    for attempt in range(attempts):
        out, interrupted = _dump_once(timeout)
        if not interrupted or attempt == attempts - 1:
            return out
    return out  # pragma: no cover


def _dump_once(timeout: float):
    out = [Reset()]
    interrupted = False
    ipr = IPRSocket(groups=0)
    try:
        ipr.bind(groups=0)
        sock = ipr.socket
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        for kind, msg in ((RTM_GETLINK, ifinfmsg()), (RTM_GETADDR, ifaddrmsg()),
                          (RTM_GETROUTE, rtmsg())):
            msg["family"] = socket.AF_UNSPEC
            ipr.put(msg, msg_type=kind, msg_flags=NLM_F_REQUEST | NLM_F_DUMP)
            done = False
            while not done:
                if time.monotonic() > deadline:
                    raise NfflowdError(f"rtnetlink dump took more than {timeout:g} s")
                try:
                    data = sock.recv(RECV_SIZE)
                except socket.timeout:
                    raise NfflowdError(f"rtnetlink dump took more than {timeout:g} s") from None
                for m in ipr.marshal.parse(data):
                    h = m["header"]
                    if h["flags"] & NLM_F_DUMP_INTR:
                        interrupted = True
                    if h["type"] == NLMSG_DONE:
                        done = True
                        break
                    if h["type"] == NLMSG_ERROR:
                        if h.get("error") is not None:
                            raise NfflowdError(f"rtnetlink dump refused: {h['error']}")
                        continue
                    p = parse(m)
                    if p is not None:
                        out.append(p)
    finally:
        ipr.close()
    return out, interrupted
