"""The flow-tools view: ``Flow`` records -> the classic 18-field records.

Strategy: the NetFlow v5 encoder and the syslog CSV mirror must carry exactly
the same values, so both are produced from one computed tuple per record
(``FtRecord``), built here once per batch and shared by every consumer.  The
tuple is in the flow-tools field order (``FIELDS``); every field is an int
except the four addresses (EXADDR, SRCADDR, DSTADDR, NEXTHOP), which stay
packed network-order bytes as in ``Flow`` (4 or 16 bytes): the v5 encoder packs
them as they are, the CSV formatter turns them into text.

The triplet: each connection arrives as two ``Flow`` records (ORIGINAL, REPLY).
An ORIGINAL flow gives one record with its pre-translation tuple and, only
when it was translated, a second record with the post-translation tuple and the
same counters.  A REPLY flow gives one record with its own tuple (never the
``post_*`` fields).  Records come out in the order of the flows that went in.

Times: UNIX_SECS, UNIX_NSECS and SYSUPTIME are the values of the export header
that carries the record (``now_ns``, the time of the batch); FIRST and LAST are
the flow's start/end as SysUptime milliseconds, ``ms - boot_ms`` clamped at 0 and
wrapped modulo 2**32 as in NetFlow v5.  ``boot_ms`` is the wall-clock epoch ms at
which this machine booted (``boot_ms_from_uptime`` derives it).

Counters: flow-tools and v5 have 32-bit DPKTS/DOCTETS; wider values are clamped
to 2**32-1 here, so the CSV line shows the same value the v5 record carries.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable

from .record import ORIGINAL, Flow

FIELDS = (
    "UNIX_SECS", "UNIX_NSECS", "SYSUPTIME", "EXADDR", "DPKTS", "DOCTETS", "FIRST",
    "LAST", "SRCADDR", "DSTADDR", "NEXTHOP", "INPUT", "OUTPUT", "SRCPORT", "DSTPORT",
    "PROT", "TOS", "TCP_FLAGS",
)
# Indexes into an FtRecord (the tuple), for readers that want names.
(UNIX_SECS, UNIX_NSECS, SYSUPTIME, EXADDR, DPKTS, DOCTETS, FIRST, LAST, SRCADDR,
 DSTADDR, NEXTHOP, INPUT, OUTPUT, SRCPORT, DSTPORT, PROT, TOS, TCP_FLAGS) = range(18)

FtRecord = tuple  # the 18 values above, in that order

U32 = 0xFFFFFFFF
_ZERO4 = bytes(4)
_ZERO16 = bytes(16)
_inet_ntoa = socket.inet_ntoa
_inet_ntop = socket.inet_ntop
_AF_INET6 = socket.AF_INET6


def boot_ms_from_uptime(now_ns: int, uptime_ms: int) -> int:
    """The wall-clock epoch ms of boot, from a wall clock and an uptime read
    together (e.g. ``time.time_ns()`` and CLOCK_BOOTTIME in ms)."""
    return now_ns // 1_000_000 - uptime_ms


def header_times(now_ns: int, boot_ms: int) -> tuple[int, int, int]:
    """(unix_secs, unix_nsecs, sys_uptime_ms) of an export made at ``now_ns``."""
    secs, nsecs = divmod(now_ns, 1_000_000_000)
    up = now_ns // 1_000_000 - boot_ms
    return secs & U32, nsecs, (up if up > 0 else 0) & U32


def pack_address(addr) -> bytes:
    """An address given as text, bytes (4/16) or None -> packed bytes (None: 0.0.0.0)."""
    if addr is None:
        return _ZERO4
    if isinstance(addr, (bytes, bytearray)):
        if len(addr) not in (4, 16):
            raise ValueError(f"a packed address has 4 or 16 bytes, got {len(addr)}")
        return bytes(addr)
    return ipaddress.ip_address(str(addr)).packed


def expand(flows: Iterable[Flow], now_ns: int, boot_ms: int, exaddr=None) -> list[FtRecord]:
    """The flow-tools records of ``flows`` (see the module doc), in order.

    ``exaddr`` is the configured export source address (text, packed bytes or
    None for 0.0.0.0).  Pure function: no clock, no I/O.
    """
    secs, nsecs, up = header_times(now_ns, boot_ms)
    ex = pack_address(exaddr)
    out: list[FtRecord] = []
    append = out.append
    for f in flows:
        (family, proto, src, dst, sport, dport, psrc, pdst, psport, pdport,
         pkts, octs, start, end, direction, _reason, tos, flags, _cid) = f
        first = start - boot_ms
        first = (first & U32) if first > 0 else 0
        last = end - boot_ms
        last = (last & U32) if last > 0 else 0
        # 32-bit counters (flow-tools, NetFlow v5): clamp, never wrap.
        if pkts > U32:
            pkts = U32
        if octs > U32:
            octs = U32
        nh = _ZERO4 if len(src) == 4 else _ZERO16
        append((secs, nsecs, up, ex, pkts, octs, first, last, src, dst, nh, 0, 0,
                sport, dport, proto, tos, flags))
        if direction == ORIGINAL and (src != psrc or dst != pdst
                                      or sport != psport or dport != pdport):
            append((secs, nsecs, up, ex, pkts, octs, first, last, psrc, pdst, nh, 0, 0,
                    psport, pdport, proto, tos, flags))
    return out


def ntop(addr: bytes) -> str:
    """Packed address -> text (dotted quad or RFC 5952 IPv6)."""
    return _inet_ntoa(addr) if len(addr) == 4 else _inet_ntop(_AF_INET6, addr)


def csv_line(r: FtRecord) -> str:
    """One record as the flow-tools CSV line (flow-export -f2 field order)."""
    return (f"{r[0]},{r[1]},{r[2]},{ntop(r[3])},{r[4]},{r[5]},{r[6]},{r[7]},"
            f"{ntop(r[8])},{ntop(r[9])},{ntop(r[10])},{r[11]},{r[12]},{r[13]},{r[14]},"
            f"{r[15]},{r[16]},{r[17]}")


# Hot path helpers for csv_lines: str() of the small fields (ports, protocol,
# TOS, flags, interfaces are all < 65536) by table, and the text of addresses
# by a bounded cache (a NAT box sees a limited set of addresses; the cache is
# emptied when it reaches _CACHE_MAX so memory stays bounded).
_STR = [str(i) for i in range(65536)]
_CACHE_MAX = 65536
_addr_text: dict[bytes, str] = {}


def csv_lines(records: Iterable[FtRecord]) -> list[str]:
    """``csv_line`` of every record (same text, faster): the 4-field prefix
    is formatted once per run of records sharing it, small ints come from a
    table and address text from a bounded cache.  Fields are the
    non-negative ints ``expand`` makes; a small field >= 65536 takes the slow
    path (``csv_line``)."""
    out: list[str] = []
    append = out.append
    key = None
    prefix = ""
    cache = _addr_text
    get = cache.get
    S = _STR
    for r in records:
        k = (r[0], r[1], r[2], r[3])
        if k != key:
            key = k
            prefix = f"{r[0]},{r[1]},{r[2]},{ntop(r[3])},"
        try:
            s = r[8]
            sa = get(s)
            if sa is None:
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                sa = cache[s] = ntop(s)
            d = r[9]
            da = get(d)
            if da is None:
                if len(cache) >= _CACHE_MAX:
                    cache.clear()
                da = cache[d] = ntop(d)
            nh = r[10]
            nha = get(nh)
            if nha is None:
                nha = cache[nh] = ntop(nh)
            append(f"{prefix}{r[4]},{r[5]},{r[6]},{r[7]},{sa},{da},{nha},{S[r[11]]},"
                   f"{S[r[12]]},{S[r[13]]},{S[r[14]]},{S[r[15]]},{S[r[16]]},{S[r[17]]}")
        except IndexError:  # a small field >= 65536 (not from expand): slow path
            append(csv_line(r))
    return out
