"""The NAT trace archive's rows and rules: one row per connection, no files.

Strategy: a connection is written twice, an OPEN row when it is created (a NAT
create event: NEW or the start-up dump) and a FINAL row when it ends (its two
DESTROY ``Flow`` records, paired by conntrack id); active-timeout records add
UPDATE rows.  Rows of one connection share an identity (firewall, conntrack
id, protocol, original and translated source, original destination) and are
merged (``merge``) when an hour is sealed and again when a query reads rows
not yet sealed, so an open connection is found with an unknown end.

Rows are numpy structured arrays (``ROW``).  Addresses are 16 bytes (IPv4 as
::ffff:a.b.c.d).  ``pkey`` is the lookup key: the public address and port of
the connection (translated source when the source was translated, else the
original destination when the destination was, else the source) followed by
the port, big-endian; sealed files are sorted by it, then by start.

Times are UTC epoch milliseconds; ``end_ms`` 0 means not ended (open, or the
end was never seen).  Partitions are hours of the row's event time (start for
OPEN rows, end for the others); ``query_hours`` says which sealed hours can
hold a connection seen at a time.  Nothing here reads a clock.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import re

import numpy as np

from nfflowd.record import (END_ACTIVE_TIMEOUT, END_FORCED, END_IDLE_TIMEOUT,
                            END_LACK_OF_RESOURCES, END_OF_FLOW, ORIGINAL)

KIND_OPEN, KIND_FINAL, KIND_UPDATE = 0, 1, 2
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# An OPEN row and its FINAL row may disagree on the start by this much (the
# NEW event's arrival against the kernel's timestamp).
START_SLACK_MS = 10_000

ROW = np.dtype([
    ("start_ms", "<i8"), ("end_ms", "<i8"),
    ("kind", "u1"), ("reason", "u1"), ("family", "u1"), ("proto", "u1"),
    ("src", "S16"), ("dst", "S16"), ("sport", "<u2"), ("dport", "<u2"),
    ("xsrc", "S16"), ("xdst", "S16"), ("xsport", "<u2"), ("xdport", "<u2"),
    ("pkts_out", "<u8"), ("bytes_out", "<u8"), ("pkts_in", "<u8"), ("bytes_in", "<u8"),
    ("zone", "<u2"), ("mark", "<u4"), ("conn_id", "<u4"),
    ("fw", "S32"), ("pkey", "S18"),
])
ADDR_FIELDS = ("src", "dst", "xsrc", "xdst")
# How a connection ended, by the FINAL row's ``reason`` (IPFIX flowEndReason as
# the correlator sets it); an OPEN row's reason is 0.
REASONS = {
    0: "open",
    END_IDLE_TIMEOUT: "idle",
    END_ACTIVE_TIMEOUT: "active-timeout",
    END_OF_FLOW: "destroy",
    END_FORCED: "forced",
    END_LACK_OF_RESOURCES: "resync",
}
_ICMP = (1, 58)
_V4_PREFIX = b"\x00" * 10 + b"\xff\xff"


def addr16(a: bytes) -> bytes:
    """A packed address as the archive's 16 bytes."""
    return _V4_PREFIX + a if len(a) == 4 else a


def addr_text(a16: bytes) -> str:
    a16 = a16.ljust(16, b"\x00")     # numpy strips trailing NULs from S16
    if a16[:12] == _V4_PREFIX:
        return str(ipaddress.IPv4Address(a16[12:]))
    return str(ipaddress.IPv6Address(a16))


def make_pkey(addr16_: bytes, port: int) -> bytes:
    return addr16_ + port.to_bytes(2, "big")


class RowBuilder:
    """``Flow`` records and ``NatEvent``s into rows.

    The ICMP query id is not in ``Flow`` records (they carry type and code);
    it is remembered from the create event, by conntrack id, so the FINAL row
    of a ping is found under its translated id.  Zone and mark are not in the
    records yet and are written 0.
    """

    def __init__(self, firewall: str, icmp_max: int = 65536):
        self.firewall = firewall.encode()[:32]
        self._icmp: dict[int, tuple[int, int]] = {}
        self._icmp_max = icmp_max
        self.unpaired = 0          # a direction whose other one never came

    def rows(self, flows, nat_events) -> np.ndarray:
        out = []
        fw = self.firewall
        for e in nat_events:
            if not e.created:
                continue
            if e.proto in _ICMP and e.conn_id:
                if len(self._icmp) >= self._icmp_max:
                    self._icmp.clear()
                self._icmp[e.conn_id] = (e.sport, e.post_sport)
            out.append((e.time_ms, 0, KIND_OPEN, 0, e.family, e.proto,
                        addr16(e.src), addr16(e.dst), e.sport, e.dport,
                        addr16(e.post_src), addr16(e.post_dst), e.post_sport, e.post_dport,
                        0, 0, 0, 0, 0, 0, e.conn_id, fw, b""))
        held = {}
        for f in flows:
            if f.conn_id == 0:
                continue
            other = held.pop(f.conn_id, None)
            if other is None:
                held[f.conn_id] = f
                continue
            o, r = (f, other) if f.direction == ORIGINAL else (other, f)
            out.append(self._final(o, r, fw))
        self.unpaired += len(held)
        return finish(out)

    def _final(self, o, r, fw) -> tuple:
        sport, xsport, dport = o.sport, o.post_sport, o.dport
        if o.proto in _ICMP:
            ids = self._icmp.pop(o.conn_id, None)
            if o.end_reason == END_ACTIVE_TIMEOUT and ids is not None:
                self._icmp[o.conn_id] = ids
            if ids is not None:
                sport, xsport = ids
        kind = KIND_UPDATE if o.end_reason == END_ACTIVE_TIMEOUT else KIND_FINAL
        return (o.start_ms, o.end_ms, kind, o.end_reason, o.family, o.proto,
                addr16(o.src), addr16(o.dst), sport, dport,
                addr16(o.post_src), addr16(o.post_dst), xsport, o.post_dport,
                o.packets, o.octets, r.packets, r.octets, 0, 0, o.conn_id, fw, b"")


def finish(tuples) -> np.ndarray:
    """Rows from tuples in ``ROW`` order (``pkey`` filled in here)."""
    rows = np.array(tuples, dtype=ROW) if tuples else np.zeros(0, ROW)
    set_pkeys(rows)
    return rows


def _u8(a: np.ndarray) -> np.ndarray:
    """The bytes of an S-field as an (n, width) uint8 array."""
    return np.ascontiguousarray(a).view(np.uint8).reshape(len(a), a.dtype.itemsize)


def set_pkeys(rows: np.ndarray) -> None:
    """Fill ``pkey``: the public side of each connection (see the module)."""
    n = len(rows)
    if n == 0:
        return
    src_x = (rows["src"] != rows["xsrc"]) | (rows["sport"] != rows["xsport"])
    dst_x = (rows["dst"] != rows["xdst"]) | (rows["dport"] != rows["xdport"])
    use_dst = ~src_x & dst_x
    addr = np.where(use_dst, rows["dst"], rows["xsrc"])
    port = np.where(use_dst, rows["dport"], rows["xsport"]).astype(">u2")
    key = np.empty((n, 18), np.uint8)
    key[:, :16] = _u8(addr.astype("S16"))
    key[:, 16:] = port.view(np.uint8).reshape(n, 2)
    rows["pkey"] = key.view("S18").reshape(n)


_ID_WORDS = (("fw", 4), ("src", 2), ("dst", 2), ("xsrc", 2))
_ID_SMALL = ("conn_id", "proto", "sport", "dport", "xsport")
_MIX = np.uint64(0x9E3779B97F4A7C15)


def identity_hash(rows: np.ndarray) -> np.ndarray:
    """A 64-bit hash of the fields a connection's rows share (firewall,
    conntrack id, protocol, original source and destination, translated
    source); callers check equality where it matters (``same_identity``)."""
    n = len(rows)
    h = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        for f, words in _ID_WORDS:
            w = np.ascontiguousarray(rows[f]).view("<u8").reshape(n, words)
            for i in range(words):
                h = (h ^ w[:, i]) * _MIX
                h ^= h >> np.uint64(29)
        small = np.zeros(n, np.uint64)
        for f in _ID_SMALL:
            small = (small << np.uint64(8 * rows.dtype[f].itemsize)) | rows[f].astype(np.uint64)
        h = (h ^ small) * _MIX
        h ^= h >> np.uint64(31)
    return h


def same_identity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ok = np.ones(len(a), bool)
    for f, _ in _ID_WORDS:
        ok &= a[f] == b[f]
    for f in _ID_SMALL:
        ok &= a[f] == b[f]
    return ok


def _collapse_open(rows: np.ndarray, h: np.ndarray) -> np.ndarray:
    """OPEN rows of the same connection (a dump repeats a create) as one: the
    earliest."""
    if len(rows) < 2:
        return rows
    order = np.lexsort((rows["start_ms"], h))
    hs = h[order]
    keep = order[np.r_[True, hs[1:] != hs[:-1]]]
    return rows[np.sort(keep)]


def merge(rows: np.ndarray) -> np.ndarray:
    """One row per connection.  A FINAL row absorbs its OPEN rows; with
    UPDATE rows (active timeout) the connection's counters are summed and it
    takes the end and reason of its last FINAL row, or stays open (end 0)."""
    if len(rows) == 0:
        return rows.copy()
    h = identity_hash(rows)
    upd = rows["kind"] == KIND_UPDATE
    if upd.any():
        with_upd = np.isin(h, h[upd])
        rest = merge(rows[~with_upd])
        return np.concatenate([rest, _merge_exact(rows[with_upd])])
    fin = rows["kind"] == KIND_FINAL
    finals, fh = rows[fin], h[fin]
    opens, oh = rows[~fin], h[~fin]
    if len(finals) and len(opens):
        order = np.argsort(fh, kind="stable")
        pos = np.searchsorted(fh[order], oh).clip(0, len(fh) - 1)
        match = order[pos]
        absorbed = (fh[match] == oh) & same_identity(opens, finals[match])
        opens, oh = opens[~absorbed], oh[~absorbed]
    return np.concatenate([finals, _collapse_open(opens, oh)])


def _merge_exact(rows: np.ndarray) -> np.ndarray:
    n = len(rows)
    if n < 2:
        return rows.copy()
    _, inv = np.unique(_identity(rows), return_inverse=True)
    inv = inv.reshape(n)
    order = np.argsort(inv, kind="stable")
    r = rows[order]
    g = inv[order]
    first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    out = r[first].copy()
    out["start_ms"] = np.minimum.reduceat(r["start_ms"], first)
    for c in ("pkts_out", "bytes_out", "pkts_in", "bytes_in"):
        out[c] = np.add.reduceat(r[c], first)
    final = r["kind"] == KIND_FINAL
    has_final = np.maximum.reduceat(final.astype(np.uint8), first).astype(bool)
    fin_end = np.maximum.reduceat(np.where(final, r["end_ms"], -1), first)
    # the FINAL row with the latest end gives the reason
    cand = np.where(final, r["end_ms"], -1)
    is_best = final & (cand == np.repeat(fin_end, np.diff(np.r_[first, len(r)])))
    best_reason = np.zeros(len(first), np.uint8)
    idx = np.flatnonzero(is_best)
    best_reason[np.searchsorted(first, idx, side="right") - 1] = r["reason"][idx]
    out["kind"] = np.where(has_final, KIND_FINAL, KIND_OPEN)
    out["end_ms"] = np.where(has_final, fin_end, 0)
    out["reason"] = np.where(has_final, best_reason, 0)
    return out


def _identity(rows: np.ndarray) -> np.ndarray:
    """One void value per row: the identity fields' bytes."""
    n = len(rows)
    parts = [_u8(rows[f]) for f, _ in _ID_WORDS]
    parts += [np.ascontiguousarray(rows[f]).view(np.uint8).reshape(n, -1) for f in _ID_SMALL]
    ident = np.ascontiguousarray(np.hstack(parts))
    return ident.view(f"V{ident.shape[1]}").reshape(n)


def hour_of(ms) -> int:
    return int(ms) // HOUR_MS * HOUR_MS


def event_ms(rows: np.ndarray) -> np.ndarray:
    """The time that places each row in a partition."""
    return np.where(rows["kind"] == KIND_OPEN, rows["start_ms"], rows["end_ms"])


def seal_split(hour_rows: np.ndarray, open_rows: np.ndarray, hour_ms: int):
    """Seal one hour: its rows (all kinds) and the archive's open set in,
    ``(main, long, open)`` out.  ``main`` holds the connections that ended in
    the hour and started at most an hour before it, ``long`` those that ended
    in it after a longer life, ``open`` the new open set (connections with no
    end yet, whatever hour they started in)."""
    merged = merge(np.concatenate([open_rows, hour_rows]))
    done = merged["kind"] == KIND_FINAL
    short = merged["start_ms"] >= hour_ms - HOUR_MS
    return merged[done & short], merged[done & ~short], merged[~done]


def query_hours(t_ms: int, window_ms: int) -> range:
    """The sealed hours whose ``main`` file can hold a connection seen between
    ``t - window`` and ``t + window`` (see ``seal_split``): it ended at or
    after ``t - window`` in the hour, and started at most an hour before it."""
    lo = hour_of(t_ms - window_ms)
    hi = hour_of(t_ms + window_ms) + HOUR_MS
    return range(lo, hi + 1, HOUR_MS)


def seen_at(rows: np.ndarray, t_ms: int, window_ms: int) -> np.ndarray:
    """Merged rows of connections alive at some time in ``t +- window``."""
    alive = (rows["start_ms"] <= t_ms + window_ms) & (
        (rows["kind"] != KIND_FINAL) | (rows["end_ms"] >= t_ms - window_ms))
    return rows[alive]


# ---- query text --------------------------------------------------------------

class QueryError(ValueError):
    """A query that cannot be asked (the message says why)."""


_PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "ipv6-icmp": 58,
           "sctp": 132, "dccp": 33, "gre": 47, "udplite": 136}
PROTO_NAMES = {v: k for k, v in _PROTOS.items() if k != "ipv6-icmp"}


def parse_target(text: str) -> tuple[bytes, int]:
    """``ADDR:PORT`` or ``[V6]:PORT`` into the 16-byte address and the port."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([0-9.]+):(\d+)", text.strip())
    if not m:
        raise QueryError(f"not an address and port: {text!r} "
                         "(203.0.113.1:40000 or [2001:db8::1]:40000)")
    addr, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    try:
        packed = ipaddress.ip_address(addr).packed
    except ValueError:
        raise QueryError(f"not an IP address: {addr!r}") from None
    p = int(port)
    if p > 65535:
        raise QueryError(f"port out of range: {p}")
    return addr16(packed), p


def parse_addr(text: str) -> bytes:
    try:
        return addr16(ipaddress.ip_address(text.strip()).packed)
    except ValueError:
        raise QueryError(f"not an IP address: {text!r}") from None


def parse_time(text: str, local_tz: _dt.tzinfo | None = None) -> int:
    """ISO 8601 (local time when no zone is given: ``local_tz``, else the
    system's) or epoch seconds, into epoch milliseconds."""
    s = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return round(float(s) * 1000)
    try:
        t = _dt.datetime.fromisoformat(s)
    except ValueError:
        raise QueryError(f"not a time: {text!r} (ISO 8601 like "
                         "'2026-12-04 10:00:03' or '2026-12-04T10:00:03+01:00', "
                         "or epoch seconds)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=local_tz) if local_tz is not None else t.astimezone()
    return round(t.timestamp() * 1000)


def parse_window(text: str) -> int:
    """``2s``, ``500ms``, ``1m``, ``1h`` or plain seconds, into milliseconds."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)?", text.strip())
    if not m:
        raise QueryError(f"not a duration: {text!r} (like 2s, 500ms, 1m)")
    unit = {"ms": 1, "s": 1000, "m": 60_000, "h": HOUR_MS, None: 1000}[m.group(2)]
    return round(float(m.group(1)) * unit)


def parse_proto(text: str) -> int:
    s = text.strip().lower()
    if s.isdigit() and int(s) < 256:
        return int(s)
    if s in _PROTOS:
        return _PROTOS[s]
    raise QueryError(f"unknown protocol: {text!r}")


def row_dict(r, tz: _dt.tzinfo | None = _dt.timezone.utc) -> dict:
    """One merged row for people and programs: text addresses, times in
    ``tz`` (ISO 8601), end None while open."""
    def when(ms):
        return _dt.datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="milliseconds")
    end = int(r["end_ms"]) if r["kind"] == KIND_FINAL else None
    return {
        "start": when(int(r["start_ms"])),
        "end": None if end is None else when(end),
        "state": REASONS.get(int(r["reason"]), str(int(r["reason"]))) if end else "open",
        "proto": PROTO_NAMES.get(int(r["proto"]), str(int(r["proto"]))),
        "src": addr_text(bytes(r["src"])), "sport": int(r["sport"]),
        "dst": addr_text(bytes(r["dst"])), "dport": int(r["dport"]),
        "xsrc": addr_text(bytes(r["xsrc"])), "xsport": int(r["xsport"]),
        "xdst": addr_text(bytes(r["xdst"])), "xdport": int(r["xdport"]),
        "pkts_out": int(r["pkts_out"]), "bytes_out": int(r["bytes_out"]),
        "pkts_in": int(r["pkts_in"]), "bytes_in": int(r["bytes_in"]),
        "zone": int(r["zone"]), "mark": int(r["mark"]),
        "conn_id": int(r["conn_id"]), "firewall": bytes(r["fw"]).decode(errors="replace"),
    }
