"""The flow-tools view: a ``FlowBatch`` -> the classic 18-field records.

Strategy: the NetFlow v5 encoder and the syslog CSV mirror must carry exactly
the same values, so both are produced from one computed record per flow-tools
record, built here once per batch (``expand``) and shared by every consumer.

Shape (for speed): ``expand`` returns an ``FtBatch``.  The fields that are the
same for the whole batch are carried once, on the batch: UNIX_SECS,
UNIX_NSECS, SYSUPTIME (``unix_secs``, ``unix_nsecs``, ``sys_uptime``) and
EXADDR (``exaddr``, packed bytes).  NEXTHOP is always the zero address of the
record's family (0.0.0.0 or ::).  INPUT and OUTPUT are the flow's ``in_if``
and ``out_if`` (16 bits in flow-tools and NetFlow v5): an index wider than
that becomes 0 (unknown) rather than clamped to 65535, which could be the
index of another interface; such records are counted in the batch's
``interfaces_zeroed`` (the v5 encoders add it to theirs).  The per-record values are in the form of
the ``FlowBatch`` they come from: ``batch.columns`` (``FtColumns``) for a
batch of columns, else None; ``batch.records``, one flat tuple per record in
NetFlow v5 wire order (``R_SRCADDR`` ... ``R_TOS``), made from the columns
when first asked for::

    (SRCADDR, DSTADDR, INPUT, OUTPUT, DPKTS, DOCTETS, FIRST, LAST, SRCPORT,
     DSTPORT, TCP_FLAGS, PROT, TOS)

Addresses stay packed network-order bytes as in ``Flow`` (4 or 16 bytes): the
v5 encoder packs them as they are, the CSV formatter turns them into text.
Readers that want the classic 18 fields (``FIELDS`` order, indexes
``UNIX_SECS`` ... ``TCP_FLAGS``) index or iterate the batch: ``batch[i]`` is
record i as an 18-tuple (not on the hot path).

The triplet: each connection arrives as two ``Flow`` records (ORIGINAL, REPLY).
An ORIGINAL flow gives one record with its pre-translation tuple and, only
when it was translated, a second record with the post-translation tuple and the
same counters and interfaces.  A REPLY flow gives one record with its own tuple (never the
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
from itertools import accumulate
from operator import itemgetter
from typing import NamedTuple

from nfflowd.record import ORIGINAL, FlowBatch, int_column, interleave
# numpy, imported at first use: this module is loaded with the configuration,
# before the command line blocks the daemon's signals (see record._Numpy)
from nfflowd.record import np

FIELDS = (
    "UNIX_SECS", "UNIX_NSECS", "SYSUPTIME", "EXADDR", "DPKTS", "DOCTETS", "FIRST",
    "LAST", "SRCADDR", "DSTADDR", "NEXTHOP", "INPUT", "OUTPUT", "SRCPORT", "DSTPORT",
    "PROT", "TOS", "TCP_FLAGS",
)
# Indexes into an FtRecord (the classic 18-tuple), for readers that want names.
(UNIX_SECS, UNIX_NSECS, SYSUPTIME, EXADDR, DPKTS, DOCTETS, FIRST, LAST, SRCADDR,
 DSTADDR, NEXTHOP, INPUT, OUTPUT, SRCPORT, DSTPORT, PROT, TOS, TCP_FLAGS) = range(18)

FtRecord = tuple  # the 18 values above, in that order

# Indexes into a record of ``FtBatch.records`` (NetFlow v5 wire order).
(R_SRCADDR, R_DSTADDR, R_INPUT, R_OUTPUT, R_DPKTS, R_DOCTETS, R_FIRST, R_LAST, R_SRCPORT,
 R_DSTPORT, R_TCP_FLAGS, R_PROT, R_TOS) = range(13)

U32 = 0xFFFFFFFF
U16 = 0xFFFF
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


class FtBatch:
    """The flow-tools records of one batch (see the module doc).

    ``records`` is a list of flat tuples (``R_*`` order); the batch-wide fields
    are attributes.  ``len(batch)``, ``batch[i]`` (an 18-tuple, ``FIELDS``
    order; slices give lists) and iteration give the classic view.
    Consumers must not change ``records`` after handing the batch to an
    encoder (the v5 record bodies are packed once and cached on the batch).
    """

    __slots__ = ("unix_secs", "unix_nsecs", "sys_uptime", "exaddr", "_records", "v5_cache",
                 "columns", "interfaces_zeroed")

    def __init__(self, unix_secs: int, unix_nsecs: int, sys_uptime: int, exaddr: bytes,
                 records: list[tuple] | None, columns=None, interfaces_zeroed: int = 0):
        self.unix_secs = unix_secs
        self.unix_nsecs = unix_nsecs
        self.sys_uptime = sys_uptime
        self.exaddr = exaddr
        self._records = records
        self.v5_cache = None        # netflow5's packed bodies, shared by all v5 encoders
        # ``FtColumns`` when expanded from a batch of columns (records then
        # made from them when first asked for)
        self.columns = columns
        # flows whose in_if or out_if was wider than 16 bits (given 0)
        self.interfaces_zeroed = interfaces_zeroed

    @property
    def records(self) -> list[tuple]:
        if self._records is None:
            self._records = self.columns.records() if self.columns is not None else []
        return self._records

    @records.setter
    def records(self, value: list[tuple]) -> None:
        self._records = value
        self.columns = None

    def replace(self, records: list[tuple]) -> "FtBatch":
        """The same header with other records (tests, hand-made records)."""
        return FtBatch(self.unix_secs, self.unix_nsecs, self.sys_uptime, self.exaddr,
                       records)

    def full(self, r: tuple) -> FtRecord:
        """A record of ``records`` as the classic 18-tuple."""
        (src, dst, in_if, out_if, pkts, octs, first, last, sport, dport, flags, proto, tos) = r
        return (self.unix_secs, self.unix_nsecs, self.sys_uptime, self.exaddr, pkts, octs,
                first, last, src, dst, _ZERO4 if len(src) == 4 else _ZERO16, in_if, out_if,
                sport, dport, proto, tos, flags)

    def __len__(self) -> int:
        if self._records is None and self.columns is not None:
            return self.columns.n
        return len(self.records)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self.full(r) for r in self.records[i]]
        return self.full(self.records[i])

    def __iter__(self):
        return map(self.full, self.records)

    def __repr__(self) -> str:
        return (f"FtBatch({self.unix_secs}, {self.unix_nsecs}, {self.sys_uptime}, "
                f"{ntop(self.exaddr)}, {len(self.records)} records)")


class FtColumns:
    """The records of an ``FtBatch`` as columns: ``src`` and ``dst`` (n, 16)
    uint8 (IPv4 in the first 4 bytes), ``is4`` bool (the addresses are 4
    bytes long), the other ``R_*`` fields integer columns (uint64, or object
    where a hand-made record holds a value a uint64 cannot: see
    ``record.FlowBatch``).  Made by ``expand`` from a batch of columns."""

    __slots__ = ("n", "src", "dst", "is4", "in_if", "out_if", "pkts", "octs", "first", "last",
                 "sport", "dport", "flags", "proto", "tos")
    INTS = __slots__[4:]

    def records(self) -> list[tuple]:
        """The flat tuples of ``FtBatch.records``."""
        if not self.n:
            return []
        is4 = self.is4.tolist()
        out = []
        for name in ("src", "dst"):
            raw = getattr(self, name).tobytes()
            out.append([raw[16 * i:16 * i + (4 if v4 else 16)] for i, v4 in enumerate(is4)])
        rest = [getattr(self, n).tolist() for n in self.INTS]
        return list(zip(out[0], out[1], *rest))



def _since_boot(ms: np.ndarray, boot_ms: int) -> np.ndarray:
    """Epoch ms as SysUptime ms: ``ms - boot_ms`` wrapped to 32 bits, 0 at or
    before boot."""
    if ms.dtype == np.uint64 and boot_ms >= 0:
        b = np.uint64(boot_ms)
        return np.where(ms > b, (ms - b) & np.uint64(U32), np.uint64(0))
    if ms.dtype == np.uint64:       # a boot before the epoch: every time is after it
        return (ms + np.uint64(-boot_ms)) & np.uint64(U32)
    return int_column([(v - boot_ms) & U32 if v > boot_ms else 0 for v in ms.tolist()])


def _clamp32(col: np.ndarray) -> np.ndarray:
    """32-bit counters (flow-tools, NetFlow v5): clamped, never wrapped."""
    if col.dtype == np.uint64:
        return np.minimum(col, np.uint64(U32))
    return int_column([U32 if v > U32 else v for v in col.tolist()])


def _index16(col: np.ndarray) -> np.ndarray:
    """Interface indexes as 16-bit INPUT/OUTPUT: one wider than that is 0."""
    if col.dtype == np.uint64:
        return np.where(col > np.uint64(U16), np.uint64(0), col)
    return int_column([0 if v > U16 else v for v in col.tolist()])


def _differ(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row by row, whether two integer columns differ (a bool mask)."""
    if a.dtype != b.dtype:
        a, b = a.astype(object), b.astype(object)
    return np.asarray(a != b, dtype=bool)


def expand(batch: FlowBatch, now_ns: int, boot_ms: int, exaddr=None) -> FtBatch:
    """The flow-tools records of ``batch`` (see the module doc), in order.

    ``exaddr`` is the configured export source address (text, packed bytes or
    None for 0.0.0.0).  Pure function: no clock, no I/O.
    """
    secs, nsecs, up = header_times(now_ns, boot_ms)
    exaddr = pack_address(exaddr)
    if batch.flow_list is not None:
        records, zeroed = _records(batch.flow_list, boot_ms)
        return FtBatch(secs, nsecs, up, exaddr, records, interfaces_zeroed=zeroed)
    cols, zeroed = _columns(batch, boot_ms)
    return FtBatch(secs, nsecs, up, exaddr, None, cols, zeroed)


def _records(flows: list, boot_ms: int) -> tuple[list[tuple], int]:
    """``expand``'s records, one flat tuple each, of ``Flow`` tuples, and
    how many flows had an interface index wider than 16 bits."""
    out: list[tuple] = []
    append = out.append
    zeroed = 0
    # Hot path (measured in bench/): one flat tuple per record, constants
    # rather than globals, no per-record calls but the appends.
    for (family, proto, src, dst, sport, dport, psrc, pdst, psport, pdport,
         pkts, octs, start, end, direction, _reason, tos, flags, _cid, _vlan,
             in_if, out_if, _zone, _mark) in flows:
        # 32-bit counters (flow-tools, NetFlow v5): clamp, never wrap.
        if pkts > 0xFFFFFFFF:
            pkts = 0xFFFFFFFF
        if octs > 0xFFFFFFFF:
            octs = 0xFFFFFFFF
        first = (start - boot_ms) & 0xFFFFFFFF if start > boot_ms else 0
        last = (end - boot_ms) & 0xFFFFFFFF if end > boot_ms else 0
        # 16-bit INPUT/OUTPUT: a wider index is unknown (0), not clamped
        if in_if > 0xFFFF or out_if > 0xFFFF:
            zeroed += 1
            if in_if > 0xFFFF:
                in_if = 0
            if out_if > 0xFFFF:
                out_if = 0
        append((src, dst, in_if, out_if, pkts, octs, first, last, sport, dport, flags, proto,
                tos))
        if direction == ORIGINAL and (src != psrc or dst != pdst
                                      or sport != psport or dport != pdport):
            append((psrc, pdst, in_if, out_if, pkts, octs, first, last, psport, pdport, flags,
                    proto, tos))
    return out, zeroed


def _columns(batch: FlowBatch, boot_ms: int) -> tuple[FtColumns, int]:
    """``expand``'s records as columns, of a batch's columns, and how many
    flows had an interface index wider than 16 bits."""
    b = batch
    n = b.n
    trans = (np.asarray(b.direction == ORIGINAL, dtype=bool)
             & ((b.src != b.post_src).any(axis=1) | (b.dst != b.post_dst).any(axis=1)
                | _differ(b.sport, b.post_sport) | _differ(b.dport, b.post_dport)))
    f = FtColumns()
    pk, oc = _clamp32(b.packets), _clamp32(b.octets)
    first, last = _since_boot(b.start_ms, boot_ms), _since_boot(b.end_ms, boot_ms)
    is4 = np.asarray(b.family != 6, dtype=bool)
    in_if, out_if = _index16(b.in_if), _index16(b.out_if)
    zeroed = int(((in_if != b.in_if) | (out_if != b.out_if)).sum())
    if not trans.any():
        # no second records: the columns as they are
        f.src, f.dst, f.sport, f.dport, f.is4 = b.src, b.dst, b.sport, b.dport, is4
        f.pkts, f.octs, f.first, f.last = pk, oc, first, last
        f.flags, f.proto, f.tos = b.tcp_flags, b.proto, b.tos
        f.in_if, f.out_if = in_if, out_if
        f.n = n
        return f, zeroed
    # each record, followed by its post-translation record where it has one
    keep = np.empty((n, 2), dtype=bool)
    keep[:, 0] = True
    keep[:, 1] = trans
    keep = keep.reshape(2 * n)

    def two(pre, post):
        if pre.dtype != post.dtype:
            pre, post = pre.astype(object), post.astype(object)
        return interleave(pre, post)[keep]

    def same(col):
        return np.repeat(col, 2)[keep]

    f.src = two(b.src, b.post_src)
    f.dst = two(b.dst, b.post_dst)
    f.sport = two(b.sport, b.post_sport)
    f.dport = two(b.dport, b.post_dport)
    f.is4 = same(is4)
    f.pkts, f.octs, f.first, f.last = same(pk), same(oc), same(first), same(last)
    f.flags, f.proto, f.tos = same(b.tcp_flags), same(b.proto), same(b.tos)
    f.in_if, f.out_if = same(in_if), same(out_if)
    f.n = len(f.is4)
    return f, zeroed


def ntop(addr: bytes) -> str:
    """Packed address -> text (dotted quad or RFC 5952 IPv6)."""
    return _inet_ntoa(addr) if len(addr) == 4 else _inet_ntop(_AF_INET6, addr)


def csv_line(r: FtRecord) -> str:
    """One classic 18-tuple as the flow-tools CSV line (flow-export -f2 field
    order).  The reference formatter: ``csv_block`` gives the same text, faster."""
    return (f"{r[0]},{r[1]},{r[2]},{ntop(r[3])},{r[4]},{r[5]},{r[6]},{r[7]},"
            f"{ntop(r[8])},{ntop(r[9])},{ntop(r[10])},{r[11]},{r[12]},{r[13]},{r[14]},"
            f"{r[15]},{r[16]},{r[17]}")


# -- the CSV lines of a batch -------------------------------------------------
# ``csv_block`` makes every line of a batch at once: the part all lines share
# (the prefix and the batch-wide fields) once, each address's text once per
# batch, the small fields from a table, and one format per line of what is
# left; the lines go end to end into one bytes object.  Columns (a burst's
# ``FtColumns``) are read as lists, the addresses as indexes into their texts;
# tuples (``FtBatch.records``) as they are, the addresses as keys of their
# texts; one loop formats both (numpy formatting a column at a time was no
# faster on columns and slower on the tuples of small rounds: bench/README.md).

_STR = [str(i) for i in range(65536)]
_NH4 = ",0.0.0.0"        # NEXTHOP after DSTADDR
_NH6 = ",::"


class CsvBlock(NamedTuple):
    """Lines that begin alike: line i is ``head + data[ends[i - 1]:ends[i]]``
    (from 0 for the first); ``ends`` a list, one entry per line."""
    head: bytes
    data: bytes
    ends: list[int]

    def __len__(self) -> int:
        return len(self.ends)

    def line(self, i: int) -> bytes:
        """Line ``i``."""
        return self.head + self.data[self.ends[i - 1] if i else 0:self.ends[i]]

    def lines(self, start: int = 0) -> list[bytes]:
        """Each line (from line ``start`` on) on its own."""
        head, data, ends = self.head, self.data, self.ends
        return [head + data[a:b] for a, b in zip(([0] + ends)[start:-1], ends[start:])]

    @classmethod
    def of(cls, lines: list[bytes], head: bytes = b"") -> "CsvBlock":
        """A block of ``lines``, each after ``head``."""
        return cls(head, b"".join(lines), list(accumulate(map(len, lines))))


def _address_index(a: np.ndarray, is4: np.ndarray, suffix4: str, suffix6: str):
    """An (n, 16) address column as the index of each row's address in a
    list of texts (each distinct address formatted once, then the suffix of
    its family): (indexes, texts)."""
    if is4.all():
        keys = np.ascontiguousarray(a[:, :4]).view(">u4").ravel()
        uniq, inv = np.unique(keys, return_inverse=True)
        raw = uniq.astype(">u4").tobytes()
        texts = [_inet_ntoa(raw[i:i + 4]) + suffix4 for i in range(0, len(raw), 4)]
    else:
        # the family is part of the key: an IPv6 address may have the
        # bytes of an IPv4 one
        rows = np.empty((len(a), 17), np.uint8)
        rows[:, :16] = a
        rows[:, 16] = is4
        _, first, inv = np.unique(rows.view("V17").ravel(), return_index=True,
                                  return_inverse=True)
        texts = [_inet_ntoa(r[:4]) + suffix4 if v4 else _inet_ntop(_AF_INET6, r) + suffix6
                 for r, v4 in zip(map(bytes, a[first]), is4[first].tolist())]
    return inv.ravel().tolist(), texts


def _address_text(addresses, suffix4: str, suffix6: str) -> dict:
    """Packed address -> its text and the suffix of its family."""
    return {a: ntop(a) + (suffix4 if len(a) == 4 else suffix6) for a in set(addresses)}


def _bodies(records, src_text, dst_text) -> list[str]:
    """Each line after the batch-wide fields, from the comma on.  ``records``
    in ``R_*`` order, whose addresses are keys of ``src_text`` and
    ``dst_text``.  IndexError: a small field not in the table."""
    out: list[str] = []
    append = out.append
    st, dt, S = src_text, dst_text, _STR
    # The two records of a translated ORIGINAL flow share their counters and
    # the three records of a connection usually share FIRST and LAST: their
    # text is formatted once per run of equal values.
    ppk = poc = pfi = pla = None
    counters = times = ""
    for s, d, i, o, pk, oc, fi, la, sp, dp, fl, pr, tos in records:
        if pk != ppk or oc != poc:
            ppk = pk
            poc = oc
            counters = f",{pk},{oc},"
        if fi != pfi or la != pla:
            pfi = fi
            pla = la
            times = f"{fi},{la},"
        append(f"{counters}{times}{st[s]},{dt[d]},{S[i]},{S[o]},{S[sp]},{S[dp]},{S[pr]},"
               f"{S[tos]},{S[fl]}")
    return out


def csv_block(batch: FtBatch, prefix: str = "") -> CsvBlock:
    """The flow-tools CSV line of every record of ``batch``, each preceded
    by ``prefix`` (the syslog header, say), in UTF-8.  The same text as
    ``csv_line`` of each 18-tuple."""
    head = (f"{prefix}{batch.unix_secs},{batch.unix_nsecs},{batch.sys_uptime},"
            f"{ntop(batch.exaddr)}").encode()
    if not len(batch):
        return CsvBlock.of([], head)
    c = batch.columns
    if c is not None:
        ints = [getattr(c, name) for name in FtColumns.INTS]
        if any(v.dtype == object for v in ints):     # values made by hand
            return CsvBlock.of([(prefix + csv_line(r)).encode() for r in batch])
        src, src_text = _address_index(c.src, c.is4, "", "")
        dst, dst_text = _address_index(c.dst, c.is4, _NH4, _NH6)
        records = zip(src, dst, *(v.tolist() for v in ints))
    else:
        records = batch.records
        src_text = _address_text(map(itemgetter(R_SRCADDR), records), "", "")
        dst_text = _address_text(map(itemgetter(R_DSTADDR), records), _NH4, _NH6)
    try:
        bodies = _bodies(records, src_text, dst_text)
    except IndexError:      # records made by hand
        return CsvBlock.of([(prefix + csv_line(r)).encode() for r in batch])
    return CsvBlock(head, "".join(bodies).encode(),     # ASCII: one byte a character
                    list(accumulate(map(len, bodies))))


def csv_lines(batch: FtBatch, prefix: str = "") -> list[str]:
    """The lines of ``csv_block`` as a list of text."""
    block = csv_block(batch, prefix)
    if not block.data.isascii():        # character offsets are not byte offsets
        return [line.decode() for line in block.lines()]
    head, text, ends = block.head.decode(), block.data.decode(), block.ends
    return [head + text[a:b] for a, b in zip([0] + ends[:-1], ends)]
