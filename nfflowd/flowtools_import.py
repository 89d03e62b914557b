"""flow-tools CSV lines (as the syslog mirror writes them) back into
connections, for the archive.

Strategy: the mirror writes each connection as consecutive records: the
original direction before translation (A), after it (B, only when it was
translated, same counters and times as A), then the reply direction (C,
whose addresses and ports are B's, or A's, reversed, with the same times).
The pairer follows that order line by line; lines that do not fit it are
counted as unpaired, never guessed.  A syslog prefix before the 18 fields is
tolerated and its host name, when there is one, names the firewall.
"""

from __future__ import annotations

import ipaddress
import re

from nfflowd.archive import KIND_FINAL, addr16, finish
from nfflowd.record import END_OF_FLOW

_CSV = re.compile(r"(\d+),(\d+),(\d+),([0-9A-Fa-f.:]+),(\d+),(\d+),(\d+),(\d+),"
                  r"([0-9A-Fa-f.:]+),([0-9A-Fa-f.:]+),[0-9A-Fa-f.:]+,\d+,\d+,"
                  r"(\d+),(\d+),(\d+),\d+,\d+\s*$")
# RFC 3339 (rsyslog file format) or RFC 3164 time, the host, the tag (the
# local /dev/log form has no host)
_HOST = re.compile(r"^(?:<\d+>)?(?:\S+T\S+|[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) "
                   r"(\S+) \S+:\s")
_ICMP = (1, 58)


def parse_line(line: str):
    """(host or None, record) of a line, or None when it holds no CSV record.
    A record: (start_ms, end_ms, exaddr, pkts, octets, src, dst, sport, dport, proto)."""
    m = _CSV.search(line)
    if m is None:
        return None
    g = m.groups()
    try:
        src = ipaddress.ip_address(g[8]).packed
        dst = ipaddress.ip_address(g[9]).packed
    except ValueError:
        return None
    secs, nsecs, uptime, first, last = int(g[0]), int(g[1]), int(g[2]), int(g[6]), int(g[7])
    boot = secs * 1000 + nsecs // 1_000_000 - uptime
    # FIRST and LAST are uptime ms modulo 2**32: the ones after the header's
    # uptime wrapped before it
    start = boot + first - (1 << 32 if first > uptime else 0)
    end = boot + last - (1 << 32 if last > uptime else 0)
    host = None
    h = _HOST.match(line[:m.start()])
    if h:
        host = h.group(1)
    return host, (start, end, g[3], int(g[4]), int(g[5]), src, dst,
                  int(g[10]), int(g[11]), int(g[12]))


def _reverse_of(r, a) -> bool:
    """Is record ``r`` the reply of ``a`` (addresses and ports swapped)?"""
    if r[9] != a[9] or r[0] != a[0] or r[1] != a[1] or r[5] != a[6] or r[6] != a[5]:
        return False
    return r[9] in _ICMP or (r[7] == a[8] and r[8] == a[7])


def _post_of(r, a) -> bool:
    """Is ``r`` the translated form of ``a`` (same counters and times)?"""
    return r[9] == a[9] and r[0:2] == a[0:2] and r[3:5] == a[3:5] and r[5:9] != a[5:9]


class CsvPairer:
    """Feed lines; ``take`` the rows of the connections completed."""

    def __init__(self, firewall: str | None = None):
        self.firewall = firewall
        self.rows: list[tuple] = []
        self.connections = 0
        self.unpaired = 0           # records that fit no connection
        self.unparsed = 0           # lines with no CSV record
        self._a = None
        self._b = None
        self._host = None

    def feed(self, line: str) -> None:
        p = parse_line(line)
        if p is None:
            if line.strip():
                self.unparsed += 1
            return
        host, r = p
        a, b = self._a, self._b
        if a is not None and host != self._host:
            self._drop()
            a = b = None
        if a is None:
            self._a, self._host = r, host
        elif b is None:
            if _reverse_of(r, a):
                self._emit(a, a, r)
            elif _post_of(r, a):
                self._b = r
            else:
                self._drop()
                self._a, self._host = r, host
        else:
            if _reverse_of(r, b):
                self._emit(a, b, r)
            else:
                self._drop()
                self._a, self._host = r, host

    def end(self) -> None:
        self._drop()

    def _drop(self) -> None:
        self.unpaired += (self._a is not None) + (self._b is not None)
        self._a = self._b = None

    def _emit(self, a, b, c) -> None:
        fw = (self.firewall or self._host or a[2]).encode()[:32]
        fam = 4 if len(a[5]) == 4 else 6
        sport, xsport = a[7], b[7]
        self.rows.append((a[0], a[1], KIND_FINAL, END_OF_FLOW, fam, a[9],
                          addr16(a[5]), addr16(a[6]), sport, a[8],
                          addr16(b[5]), addr16(b[6]), xsport, b[8],
                          a[3], a[4], c[3], c[4], 0, 0, 0, fw, b""))
        self.connections += 1
        self._a = self._b = None

    def take(self):
        rows, self.rows = self.rows, []
        return finish(rows)
