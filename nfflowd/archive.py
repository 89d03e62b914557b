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
import struct

import numpy as np

from nfflowd.record import (END_ACTIVE_TIMEOUT, END_FORCED, END_IDLE_TIMEOUT,
                            END_LACK_OF_RESOURCES, END_OF_FLOW, ORIGINAL, FlowBatch)

KIND_OPEN, KIND_FINAL, KIND_UPDATE = 0, 1, 2
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS

ROW = np.dtype([
    ("start_ms", "<i8"), ("end_ms", "<i8"),
    ("kind", "u1"), ("reason", "u1"), ("family", "u1"), ("proto", "u1"),
    ("src", "S16"), ("dst", "S16"), ("sport", "<u2"), ("dport", "<u2"),
    ("xsrc", "S16"), ("xdst", "S16"), ("xsport", "<u2"), ("xdport", "<u2"),
    ("pkts_out", "<u8"), ("bytes_out", "<u8"), ("pkts_in", "<u8"), ("bytes_in", "<u8"),
    ("zone", "<u2"), ("mark", "<u4"), ("conn_id", "<u4"),
    ("fw", "S32"), ("pkey", "S18"),
])
# one row packed by struct, in ``ROW``'s layout: rows made from Python
# values are packed and read as one array (cheaper than a tuple a row)
_PACK = struct.Struct("<qqBBBB16s16sHH16s16sHHQQQQHII32s18s").pack
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
    """``Flow`` records (a list or a ``FlowBatch``) and ``NatEvent``s into
    rows; the records' columns are paired and copied as arrays.

    The ICMP query id is not in ``Flow`` records (they carry type and code);
    it is remembered from the create event, by conntrack id, so the FINAL row
    of a ping is found under its translated id.  Zone and mark are the
    original record's (the conntrack zone and mark at the connection's end
    or active timeout); an OPEN row has 0 for both (``NatEvent`` carries
    neither): a FINAL or UPDATE row of the connection gives them when merged.
    """

    def __init__(self, firewall: str, icmp_max: int = 65536):
        self.firewall = firewall.encode()[:32]
        self._icmp: dict[int, tuple[int, int]] = {}
        self._icmp_max = icmp_max
        self.unpaired = 0          # a direction whose other one never came

    def rows(self, flows, nat_events) -> np.ndarray:
        opens = self._opens(nat_events)
        if not len(flows):
            return opens
        if isinstance(flows, FlowBatch) and flows.flow_list is None:
            rows = self._finals(flows)          # columns (a burst's blocks)
        else:
            rows = self._finals_of_records(flows.flow_list if isinstance(flows, FlowBatch)
                                           else flows)
        self._icmp_ids(rows)
        set_pkeys(rows)
        return np.concatenate([opens, rows])

    def _finals_of_records(self, flows) -> np.ndarray:
        """``_finals`` of ``Flow`` tuples: paired by conntrack id, packed a
        connection at a time (cheaper than columns for the object path's
        batches)."""
        held: dict = {}
        out = []
        fw = self.firewall
        pack = _PACK
        v4 = _V4_PREFIX
        for f in flows:
            cid = f[18]
            if not cid:
                continue
            other = held.pop(cid, None)
            if other is None:
                held[cid] = f
                continue
            o, r = (f, other) if f[14] == ORIGINAL else (other, f)
            (fam, proto, src, dst, sport, dport, psrc, pdst, psport, pdport, pk, by, start,
             end, _d, reason) = o[:16]
            if fam == 4:
                src, dst, psrc, pdst = v4 + src, v4 + dst, v4 + psrc, v4 + pdst
            out.append(pack(start, end, KIND_UPDATE if reason == END_ACTIVE_TIMEOUT
                            else KIND_FINAL, reason, fam, proto, src, dst, sport, dport,
                            psrc, pdst, psport, pdport, pk, by, r[10], r[11], o[22], o[23],
                            cid, fw, b""))
        self.unpaired += len(held)
        return _unpack_rows(out)

    def _opens(self, nat_events) -> np.ndarray:
        out = []
        fw = self.firewall
        pack = _PACK
        v4 = _V4_PREFIX
        icmp = self._icmp
        for (fam, proto, src, dst, sport, dport, psrc, pdst, psport, pdport, t, created,
             cid) in nat_events:
            if not created:
                continue
            if proto in _ICMP and cid:
                if len(icmp) >= self._icmp_max:
                    icmp.clear()
                icmp[cid] = (sport, psport)
            if fam == 4:
                src, dst, psrc, pdst = v4 + src, v4 + dst, v4 + psrc, v4 + pdst
            out.append(pack(t, 0, KIND_OPEN, 0, fam, proto, src, dst, sport, dport,
                            psrc, pdst, psport, pdport, 0, 0, 0, 0, 0, 0, cid, fw, b""))
        rows = _unpack_rows(out)
        set_pkeys(rows)
        return rows

    def _pairs(self, b: FlowBatch) -> tuple[np.ndarray, np.ndarray]:
        """Indexes of each connection's ORIGINAL and REPLY records."""
        cid = b.conn_id
        o = np.flatnonzero((b.direction == ORIGINAL) & (cid != 0))
        r = np.flatnonzero((b.direction != ORIGINAL) & (cid != 0))
        if len(o) == len(r) and (cid[o] == cid[r]).all():
            return o, r                     # the correlator's order: each pair together
        held: dict[int, int] = {}
        po, pr = [], []
        for i in np.flatnonzero(cid != 0).tolist():
            c = int(cid[i])
            j = held.pop(c, None)
            if j is None:
                held[c] = i
            elif b.direction[i] == ORIGINAL:
                po.append(i)
                pr.append(j)
            else:
                po.append(j)
                pr.append(i)
        self.unpaired += len(held)
        return np.array(po, np.int64), np.array(pr, np.int64)

    def _finals(self, b: FlowBatch) -> np.ndarray:
        o, r = self._pairs(b)
        n = len(o)
        rows = np.zeros(n, ROW)
        if n == 0:
            return rows
        fam = b.family[o]
        rows["start_ms"] = b.start_ms[o]
        rows["end_ms"] = b.end_ms[o]
        reason = b.end_reason[o]
        rows["kind"] = np.where(reason == END_ACTIVE_TIMEOUT, KIND_UPDATE, KIND_FINAL)
        rows["reason"] = reason
        rows["family"] = fam
        rows["proto"] = b.proto[o]
        for f, col in (("src", b.src), ("dst", b.dst), ("xsrc", b.post_src),
                       ("xdst", b.post_dst)):
            rows[f] = _addr16_cols(col[o], fam)
        rows["sport"], rows["dport"] = b.sport[o], b.dport[o]
        rows["xsport"], rows["xdport"] = b.post_sport[o], b.post_dport[o]
        rows["pkts_out"], rows["bytes_out"] = b.packets[o], b.octets[o]
        rows["pkts_in"], rows["bytes_in"] = b.packets[r], b.octets[r]
        rows["zone"], rows["mark"] = b.zone[o], b.mark[o]
        rows["conn_id"] = b.conn_id[o]
        rows["fw"] = self.firewall
        return rows

    def _icmp_ids(self, rows: np.ndarray) -> None:
        """Put back the query ids of pings (from their create events)."""
        icmp = np.flatnonzero(np.isin(rows["proto"], _ICMP))
        for i in icmp.tolist():
            c = int(rows["conn_id"][i])
            ids = self._icmp.pop(c, None)
            if ids is not None:
                if rows["kind"][i] == KIND_UPDATE:
                    self._icmp[c] = ids
                rows["sport"][i], rows["xsport"][i] = ids


def _addr16_cols(a: np.ndarray, fam: np.ndarray) -> np.ndarray:
    """A batch's (n, 16) address column (IPv4 in the first 4 bytes) as
    16-byte archive addresses."""
    out = np.array(a, np.uint8, copy=True).reshape(len(a), 16)
    v4 = fam == 4
    if v4.any():
        out[v4, 12:] = out[v4, :4]
        out[v4, :10] = 0
        out[v4, 10:12] = 0xFF
    return out.view("S16").reshape(len(a))


def _unpack_rows(packed: list) -> np.ndarray:
    if not packed:
        return np.zeros(0, ROW)
    return np.frombuffer(b"".join(packed), dtype=ROW).copy()


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
    source); ``plan_merge`` checks the fields where hashes meet."""
    n = len(rows)
    h = np.zeros(n, np.uint64)
    with np.errstate(over="ignore"):
        for f, words in _ID_WORDS:
            w = np.ascontiguousarray(rows[f]).view("<u8").reshape(n, words)
            for i in range(words):
                h = (h ^ w[:, i]) * _MIX
                h ^= h >> np.uint64(29)
        for f in _ID_SMALL:
            h = (h ^ rows[f].astype(np.uint64)) * _MIX
            h ^= h >> np.uint64(31)
    return h


def plan_merge(cols) -> tuple[np.ndarray, np.ndarray]:
    """Which rows stay as they are and which need ``merge_exact``, as index
    arrays.  ``cols`` maps field names to arrays (rows or a columnar view).
    A FINAL row absorbs its OPEN rows (they go); OPEN rows of one connection
    keep the earliest; connections with UPDATE rows (active timeout) need
    their counters summed, by ``merge_exact``."""
    kind = cols["kind"]
    n = len(kind)
    every = np.arange(n)
    if n == 0:
        return every, every
    h = identity_hash(cols)
    upd = kind == KIND_UPDATE
    exact = np.zeros(n, bool)
    if upd.any():
        exact = np.isin(h, h[upd])
    fin = (kind == KIND_FINAL) & ~exact
    opn = (kind == KIND_OPEN) & ~exact
    fi, oi = every[fin], every[opn]
    if len(oi) == 0:
        return fi, every[exact]
    # sorted by hash, a group's FINAL rows first, then its OPEN rows by start
    idx = np.concatenate([fi, oi])
    is_open = np.r_[np.zeros(len(fi), np.uint8), np.ones(len(oi), np.uint8)]
    o = np.lexsort((cols["start_ms"][idx], is_open, h[idx]))
    sidx, sh, so = idx[o], h[idx][o], is_open[o]
    new = np.r_[True, sh[1:] != sh[:-1]]
    first = np.flatnonzero(new)[np.cumsum(new) - 1]       # each row's group start
    op = np.flatnonzero(so)
    head = sidx[first[op]]
    absorbed = (so[first[op]] == 0) & _same_at(cols, sidx[op], head)
    # an OPEN row not absorbed stays if it is its group's first OPEN row
    first_open = np.r_[True, (sh[op][1:] != sh[op][:-1])]
    stays = op[~absorbed & (first_open | (so[first[op]] == 0))]
    return np.sort(np.concatenate([fi, sidx[stays]])), every[exact]


def _words(col: np.ndarray) -> np.ndarray:
    c = np.ascontiguousarray(col)
    if c.dtype.kind == "S":
        return c.view("<u8").reshape(len(c), -1)
    return c.reshape(len(c), 1)


def _same_at(cols, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ok = np.ones(len(a), bool)
    for f in [f for f, _ in _ID_WORDS] + list(_ID_SMALL):
        w = _words(cols[f])
        ok &= (w[a] == w[b]).all(axis=1)
    return ok


def merge(rows: np.ndarray) -> np.ndarray:
    """One row per connection (see ``plan_merge``): a connection with a FINAL
    row takes its end and reason, else it is open (end 0)."""
    keep, exact = plan_merge(rows)
    if len(exact) == 0:
        return rows[keep]
    return np.concatenate([rows[keep], merge_exact(rows[exact])])


def merge_exact(rows: np.ndarray) -> np.ndarray:
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
    # zone and mark: of the group's latest row that has them (not OPEN: by
    # end), the mark being the connection's last
    latest = np.lexsort((np.where(r["kind"] == KIND_OPEN, -1, r["end_ms"]), g))
    last = latest[np.r_[first[1:], n] - 1]
    out["zone"], out["mark"] = r["zone"][last], r["mark"][last]
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


def seal_masks(merged, hour_ms: int):
    """Seal one hour: of the merged rows of the hour and the archive's open
    set, ``(main, long, open)`` masks.  ``main``: the connections that ended
    in the hour and started at most an hour before it; ``long``: those that
    ended in it after a longer life; ``open``: the new open set (no end yet,
    whatever hour they started in)."""
    done = merged["kind"] == KIND_FINAL
    short = merged["start_ms"] >= hour_ms - HOUR_MS
    return done & short, done & ~short, ~done


def key_order(cols) -> np.ndarray:
    """The order of sealed files: by lookup key, then start."""
    k = cols["pkey"]
    n = len(k)
    kb = np.ascontiguousarray(k).view(np.uint8).reshape(n, 18)
    hi = np.ascontiguousarray(kb[:, :8]).view(">u8").reshape(n)
    lo = np.ascontiguousarray(kb[:, 8:16]).view(">u8").reshape(n)
    port = np.ascontiguousarray(kb[:, 16:]).view(">u2").reshape(n)
    return np.lexsort((cols["start_ms"], port, lo, hi))


def query_hours(t_ms: int, window_ms: int) -> range:
    """The sealed hours whose ``main`` file can hold a connection seen between
    ``t - window`` and ``t + window`` (see ``seal_masks``): it ended at or
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
    ``tz`` (ISO 8601; None: local time, with the offset in force at each
    time), end None while open."""
    def when(ms):
        t = _dt.datetime.fromtimestamp(ms / 1000, tz)
        return (t if tz is not None else t.astimezone()).isoformat(timespec="milliseconds")
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
