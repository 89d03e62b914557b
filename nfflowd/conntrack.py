"""ctnetlink messages decoded into conntrack events (sans-IO).

Strategy: decoding is the hot path (a table flush brings over a hundred
thousand DESTROY events a second, several times what pyroute2's decoder
takes), so it is a hand-written ``struct`` walker, checked in the tests
against pyroute2's decoding of captured messages.  Each message shape the
walker meets is learnt once into a layout cache, which both this object
decoder and the columnar one read from.  The socket is
``nfflowd.io.netlink``.
"""

from __future__ import annotations

import socket as _socket
import struct as _struct
from operator import itemgetter as _itemgetter
from typing import NamedTuple


# Event kinds (what the message means to us, not its netlink type).
EV_NEW = 1       # IPCTNL_MSG_CT_NEW with NLM_F_CREATE|NLM_F_EXCL: a new connection
EV_UPDATE = 2    # IPCTNL_MSG_CT_NEW without create flags: an update event
EV_DESTROY = 3   # IPCTNL_MSG_CT_DELETE: the connection ended
EV_DUMP = 4      # IPCTNL_MSG_CT_NEW with NLM_F_MULTI: one entry of a table dump

# ct status bits (linux/netfilter/nf_conntrack_common.h)
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5


class CtTuple(NamedTuple):
    """One direction of a connection as conntrack stores it.

    ``src``/``dst`` are packed addresses (4 or 16 bytes).  For TCP, UDP, SCTP,
    DCCP and UDP-Lite ``sport``/``dport`` are the ports; for ICMP and ICMPv6
    ``sport`` is the ICMP id and ``dport`` is type*256+code; for any other
    protocol both are 0.
    """
    src: bytes
    dst: bytes
    proto: int
    sport: int
    dport: int


class CtEvent(NamedTuple):
    """One decoded ctnetlink message.  Absent counters and times are 0."""
    kind: int            # EV_*
    family: int          # 4 or 6
    ct_id: int           # CTA_ID
    status: int          # CTA_STATUS bits
    orig: CtTuple        # CTA_TUPLE_ORIG
    reply: CtTuple       # CTA_TUPLE_REPLY
    orig_packets: int    # CTA_COUNTERS_ORIG
    orig_bytes: int
    reply_packets: int   # CTA_COUNTERS_REPLY
    reply_bytes: int
    start_ns: int        # CTA_TIMESTAMP start (wall clock, ns), 0 if absent
    stop_ns: int         # CTA_TIMESTAMP stop, 0 if absent
    mark: int = 0
    zone: int = 0
    event_ns: int = 0    # CTA_TIMESTAMP_EVENT: when the kernel made the event, 0 if absent


# ---------------------------------------------------------------------------
# Decoder
# ---------------------------------------------------------------------------
#
# Numbers from linux include/uapi/linux/netlink.h, netfilter/nfnetlink.h and
# netfilter/nfnetlink_conntrack.h.


NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_CREATE = 0x400

NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
MSG_CT_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW          # 0x100
MSG_CT_GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET          # 0x101
MSG_CT_DELETE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE    # 0x102

# enum ctattr_type
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_MARK = 8
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_ID = 12
CTA_ZONE = 18
CTA_TIMESTAMP = 20
# Linux 6.14 on (with nf_conntrack_timestamp=1): be64 wall clock ns of the
# event, a top-level attribute (not inside CTA_TIMESTAMP); on NEW, the time
# the connection was made, on DESTROY, when it ended, as the kernel saw it.
CTA_TIMESTAMP_EVENT = 27
# enum ctattr_tuple
CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_TUPLE_ZONE = 3
# enum ctattr_ip
CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4
# enum ctattr_l4proto
CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTO_ICMP_ID = 4
CTA_PROTO_ICMP_TYPE = 5
CTA_PROTO_ICMP_CODE = 6
CTA_PROTO_ICMPV6_ID = 7
CTA_PROTO_ICMPV6_TYPE = 8
CTA_PROTO_ICMPV6_CODE = 9
# enum ctattr_counters
CTA_COUNTERS_PACKETS = 1
CTA_COUNTERS_BYTES = 2
CTA_COUNTERS32_PACKETS = 3
CTA_COUNTERS32_BYTES = 4
# enum ctattr_tstamp
CTA_TIMESTAMP_START = 1
CTA_TIMESTAMP_STOP = 2

NLA_TYPE_MASK = 0x3FFF   # drops NLA_F_NESTED and NLA_F_NET_BYTEORDER
_FAMILIES = {_socket.AF_INET: 4, _socket.AF_INET6: 6}


class DecodeResult(NamedTuple):
    """What one buffer of netlink messages held."""
    events: list         # list[CtEvent], in message order
    malformed: int       # messages skipped: truncated or inconsistent
    unknown: int         # messages of types (or families) not handled
    done: bool           # an NLMSG_DONE was seen
    errors: list         # list[int]: NLMSG_ERROR errno values (0 = ACK), positive


_NLMSGHDR = _struct.Struct("=IHHII")   # len, type, flags, seq, pid (native)
_NLAHDR = _struct.Struct("=HH")        # len, type (native)
_NLERR = _struct.Struct("=i")
_nlmsghdr = _NLMSGHDR.unpack_from
# the layout cache key: nlmsghdr len; type and flags; nfgenmsg and the first
# attribute header (seq and pid skipped)
_KEYHEAD = _struct.Struct("=II8xQ")
_nlahdr = _NLAHDR.unpack_from
_tnew = tuple.__new__

# Value formats (big-endian) and their sizes; the layout compiler below uses
# the same characters.
_FMT_SIZE = {"B": 1, "H": 2, "I": 4, "Q": 8, "4s": 4, "16s": 16}
_VAL = {f: _struct.Struct(">" + f).unpack_from for f in _FMT_SIZE}

# (nested type -> (field suffix, format)) for CTA_TUPLE_PROTO
_PROTO_ATTRS = {
    CTA_PROTO_NUM: ("proto", "B"),
    CTA_PROTO_SRC_PORT: ("sport", "H"),
    CTA_PROTO_DST_PORT: ("dport", "H"),
    CTA_PROTO_ICMP_ID: ("sport", "H"),
    CTA_PROTO_ICMP_TYPE: ("itype", "B"),
    CTA_PROTO_ICMP_CODE: ("icode", "B"),
    CTA_PROTO_ICMPV6_ID: ("sport", "H"),
    CTA_PROTO_ICMPV6_TYPE: ("itype", "B"),
    CTA_PROTO_ICMPV6_CODE: ("icode", "B"),
}
_IP_ATTRS = {
    CTA_IP_V4_SRC: ("src", "4s"),
    CTA_IP_V4_DST: ("dst", "4s"),
    CTA_IP_V6_SRC: ("src", "16s"),
    CTA_IP_V6_DST: ("dst", "16s"),
}
_COUNTER_ATTRS = {
    CTA_COUNTERS_PACKETS: ("packets", "Q"),
    CTA_COUNTERS_BYTES: ("bytes", "Q"),
    CTA_COUNTERS32_PACKETS: ("packets", "I"),
    CTA_COUNTERS32_BYTES: ("bytes", "I"),
}
_TS_ATTRS = {CTA_TIMESTAMP_START: ("start", "Q"), CTA_TIMESTAMP_STOP: ("stop", "Q")}
_TOP_VALUES = {
    CTA_STATUS: ("status", "I"),
    CTA_MARK: ("mark", "I"),
    CTA_ID: ("id", "I"),
    CTA_ZONE: ("zone", "H"),
    CTA_TIMESTAMP_EVENT: ("ts.event", "Q"),
}


class _Malformed(Exception):
    pass


def _walk_nest(buf, pos, end, table, prefix, fields, rec):
    """Walk one flat nest whose members are fixed-size values."""
    while pos + 4 <= end:
        ln, typ = _nlahdr(buf, pos)
        if ln < 4 or pos + ln > end:
            raise _Malformed
        rec.append((pos, None))
        spec = table.get(typ & NLA_TYPE_MASK)
        if spec is not None:
            name, fmt = spec
            if ln - 4 != _FMT_SIZE[fmt]:
                raise _Malformed
            key = prefix + name
            fields[key] = _VAL[fmt](buf, pos + 4)[0]
            rec.append((pos + 4, fmt, key))
        pos += (ln + 3) & ~3


def _walk_tuple(buf, pos, end, prefix, fields, rec):
    while pos + 4 <= end:
        ln, typ = _nlahdr(buf, pos)
        if ln < 4 or pos + ln > end:
            raise _Malformed
        rec.append((pos, None))
        typ &= NLA_TYPE_MASK
        if typ == CTA_TUPLE_IP:
            _walk_nest(buf, pos + 4, pos + ln, _IP_ATTRS, prefix, fields, rec)
        elif typ == CTA_TUPLE_PROTO:
            _walk_nest(buf, pos + 4, pos + ln, _PROTO_ATTRS, prefix, fields, rec)
        pos += (ln + 3) & ~3
    if prefix + "src" not in fields or prefix + "dst" not in fields or prefix + "proto" not in fields:
        raise _Malformed


def _walk(buf, off, ln):
    """Walk one ctnetlink message's attributes (after nfgenmsg).

    Returns ``fields`` (name -> value) and ``rec``, the recipe the layout
    compiler needs: every attribute header visited, as ``(pos, None)``, and
    every value read, as ``(pos, fmt, name)``.  Later duplicates win.
    Raises _Malformed.
    """
    fields = {}
    rec = []
    end = off + ln
    pos = off + 20
    while pos + 4 <= end:
        alen, typ = _nlahdr(buf, pos)
        if alen < 4 or pos + alen > end:
            raise _Malformed
        rec.append((pos, None))
        typ &= NLA_TYPE_MASK
        if typ == CTA_TUPLE_ORIG or typ == CTA_TUPLE_REPLY:
            prefix = "o." if typ == CTA_TUPLE_ORIG else "r."
            # a repeated tuple replaces the earlier one entirely
            for k in [k for k in fields if k.startswith(prefix)]:
                del fields[k]
            rec.append((prefix, "reset"))
            _walk_tuple(buf, pos + 4, pos + alen, prefix, fields, rec)
        elif typ == CTA_COUNTERS_ORIG:
            _walk_nest(buf, pos + 4, pos + alen, _COUNTER_ATTRS, "co.", fields, rec)
        elif typ == CTA_COUNTERS_REPLY:
            _walk_nest(buf, pos + 4, pos + alen, _COUNTER_ATTRS, "cr.", fields, rec)
        elif typ == CTA_TIMESTAMP:
            _walk_nest(buf, pos + 4, pos + alen, _TS_ATTRS, "ts.", fields, rec)
        else:
            spec = _TOP_VALUES.get(typ)
            if spec is not None and alen > 4:
                # (an empty one is padding: the kernel aligns a 64-bit value
                # with a header-only attribute on hosts that need it, typed
                # CTA_TIMESTAMP_PAD (3, CTA_STATUS at this level))
                name, fmt = spec
                if alen - 4 != _FMT_SIZE[fmt]:
                    raise _Malformed
                fields[name] = _VAL[fmt](buf, pos + 4)[0]
                rec.append((pos + 4, fmt, name))
        pos += (alen + 3) & ~3
    if "o.src" not in fields or "r.src" not in fields:
        raise _Malformed
    return fields, rec


def _tuple_from(fields, p):
    g = fields.get
    if p + "itype" in fields or p + "icode" in fields:
        dport = g(p + "itype", 0) * 256 + g(p + "icode", 0)
    else:
        dport = g(p + "dport", 0)
    return _tnew(CtTuple, (fields[p + "src"], fields[p + "dst"], fields[p + "proto"],
                           g(p + "sport", 0), dport))


def _event_from(fields, kind, family):
    g = fields.get
    return _tnew(CtEvent, (
        kind, family, g("id", 0), g("status", 0),
        _tuple_from(fields, "o."), _tuple_from(fields, "r."),
        g("co.packets", 0), g("co.bytes", 0), g("cr.packets", 0), g("cr.bytes", 0),
        g("ts.start", 0), g("ts.stop", 0), g("mark", 0), g("zone", 0), g("ts.event", 0)))


# -- layout cache -------------------------------------------------------------
#
# Messages of one kind of connection (say IPv4 TCP DESTROY with counters and
# timestamps) have the same attributes at the same offsets.  After a message
# has been walked, its shape is compiled into one big-endian Struct that reads
# every attribute header the walker visited (as one be32 each) and every value
# it read, plus a small function that checks those headers against the ones
# seen and builds the CtEvent from fixed indices.  A later message of the same
# length and family is decoded by one unpack_from and one tuple comparison; if
# any visited header differs, the walker decodes it.  Since the walker's path
# depends only on the message length and the headers it visits, equal headers
# mean the walker would read the same values from the same offsets: the result
# is the same (the tests compare both over real and fuzzed messages).



def _compile(buf, off, ln, rec, family, kind):
    """Compile the shape of the message at ``off`` (walked into ``rec``).

    Returns ``f(buf, off) -> CtEvent | None`` (None: not this shape).
    """
    base = off + 20
    hdrs = []           # positions of the attribute headers visited
    values = []         # (pos, fmt, name)
    names = {}          # name -> index in values (last wins, as in the walker)
    for r in rec:
        if r[1] == "reset":
            for k in [k for k in names if k.startswith(r[0])]:
                del names[k]
        elif r[1] is None:
            hdrs.append(r[0])
        else:
            names[r[2]] = len(values)
            values.append(r)
    if not hdrs:
        return None
    # The check: every visited header, as one big integer under a mask.
    span = max(hdrs) + 4 - base
    mask = bytearray(span)
    for p in hdrs:
        mask[p - base:p - base + 4] = b"\xff\xff\xff\xff"
    mask_int = int.from_bytes(mask, "big")
    expected = int.from_bytes(bytes(buf[base:base + span]), "big") & mask_int
    # The values: one Struct from the first attribute on, in offset order.
    order = sorted(range(len(values)), key=lambda i: values[i][0])
    fmt = [">"]
    index = {}
    cur = base
    for n, i in enumerate(order):
        pos, f, _ = values[i]
        if pos < cur:           # overlapping reads: cannot happen for a real walk
            return None
        if pos > cur:
            fmt.append(f"{pos - cur}x")
        fmt.append(f)
        index[i] = n
        cur = pos + _FMT_SIZE[f]
    st = _struct.Struct("".join(fmt))

    def v(name):
        i = names.get(name)
        return "0" if i is None else f"t[{index[i]}]"

    getters = {}

    def tup(p):
        fs = [p + "src", p + "dst", p + "proto", p + "sport", p + "dport"]
        icmp = p + "itype" in names or p + "icode" in names
        if not icmp and all(f in names for f in fs):
            # all five values present: one C-level itemgetter builds the tuple
            g = f"_g{len(getters)}"
            getters[g] = _itemgetter(*[index[names[f]] for f in fs])
            return f"_tnew(CtTuple, {g}(t))"
        if icmp:
            dport = f"{v(p + 'itype')} * 256 + {v(p + 'icode')}"
        else:
            dport = v(p + "dport")
        return (f"_tnew(CtTuple, ({v(p + 'src')}, {v(p + 'dst')}, {v(p + 'proto')}, "
                f"{v(p + 'sport')}, {dport}))")

    # Only integers and fixed names go into this source, never message data.
    src = (
        "def _decode_layout(buf, off):\n"
        f"    if _from_bytes(buf[off + 20:off + {20 + span}]) & _mask != _expected:\n"
        "        return None\n"
        "    t = _unpack(buf, off + 20)\n"
        f"    return _tnew(CtEvent, ({kind}, {family}, {v('id')}, {v('status')}, "
        f"{tup('o.')}, {tup('r.')}, {v('co.packets')}, {v('co.bytes')}, "
        f"{v('cr.packets')}, {v('cr.bytes')}, {v('ts.start')}, {v('ts.stop')}, "
        f"{v('mark')}, {v('zone')}, {v('ts.event')}))\n"
    )
    ns = {"_unpack": st.unpack_from, "_from_bytes": int.from_bytes, "_mask": mask_int,
          "_expected": expected, "_tnew": _tnew, "CtTuple": CtTuple, "CtEvent": CtEvent}
    ns.update(getters)
    exec(compile(src, "<ctnetlink layout>", "exec"), ns)  # noqa: S102
    return ns["_decode_layout"]


# -- the block specs ---------------------------------------------------------
#
# For bursts of DESTROY and NEW events ``ctblocks.decode_blocks`` reads a whole
# batch of same-key messages at once (numpy).  It needs, per shape key, where
# each attribute header and value sits, in 4-byte words from the message
# start: netlink attributes are 4-aligned (NLA_ALIGNTO) and every value nfflowd
# reads starts an attribute payload, so every position is a word.  The spec is
# made from the same walk as the compiled layout; ``ctblocks`` checks every
# header word as the compiled layout does, so it reads what the walker would.

_ADDR_WIDTH = {4: "4s", 6: "16s"}


class BlockSpec(NamedTuple):
    """Where a DESTROY or NEW shape's words lie, for the columnar decoder."""
    kind: int            # EV_DESTROY or EV_NEW
    family: int          # 4 or 6
    hdr: list            # [(word, big-endian u32)]: every header word to check
    vals: dict           # {name: (word, fmt)}: the walker's values, last wins


def _block_spec(buf, off, rec, family, kind) -> BlockSpec | None:
    """The block spec of a walked DESTROY or NEW message, or None when the
    columnar reader cannot take its shape (then the object path does)."""
    if kind != EV_DESTROY and kind != EV_NEW:
        return None
    # the shape key's words are checked too: nlmsg_len, type and flags,
    # nfgenmsg (family, version, res_id); the first attribute header is in rec
    hdr = [(w, int.from_bytes(bytes(buf[off + 4 * w:off + 4 * w + 4]), "big"))
           for w in (0, 1, 4)]
    names = {}
    for r in rec:
        if r[1] == "reset":
            for k in [k for k in names if k.startswith(r[0])]:
                del names[k]
        elif r[1] is None:
            p = r[0] - off
            if p % 4:
                return None
            hdr.append((p // 4, int.from_bytes(bytes(buf[r[0]:r[0] + 4]), "big")))
        else:
            p = r[0] - off
            if p % 4:
                return None
            names[r[2]] = (p // 4, r[1])
    addr = _ADDR_WIDTH[family]
    for n in ("o.src", "o.dst", "r.src", "r.dst"):
        if names.get(n, (0, None))[1] != addr:
            return None
    return BlockSpec(kind, family, hdr, names)


class LayoutCache:
    """The message shapes learnt, keyed by the shape key (nlmsghdr length,
    type and flags, nfgenmsg and the first attribute header, as ``decode``
    reads them): per key up to PER_KEY compiled layouts (last hit first),
    which ``decode`` runs, and the block spec of DESTROY and NEW shapes,
    which ``ctblocks.decode_blocks`` reads.  ``version`` changes whenever
    the specs do.  Bounded: past MAX layouts it starts again empty."""

    MAX = 512
    PER_KEY = 4

    def __init__(self):
        self.layouts: dict = {}     # key -> [compiled fn, ...]
        self.specs: dict = {}       # key -> BlockSpec
        self.version = 0
        self.count = 0              # compiled layouts held

    def learn(self, key, fn, spec: BlockSpec | None) -> None:
        """Keep the compiled layout ``fn`` (and ``spec``) of shape ``key``."""
        if self.count >= self.MAX:
            self.clear()
        lst = self.layouts.setdefault(key, [])
        if len(lst) >= self.PER_KEY:
            lst.pop()
            self.count -= 1
        lst.insert(0, fn)
        self.count += 1
        if spec is not None:
            self.specs[key] = spec
            self.version += 1

    def clear(self) -> None:
        self.layouts.clear()
        self.specs.clear()
        self.version += 1
        self.count = 0


LAYOUTS = LayoutCache()         # the process's: both decoders share it


def clear_layout_cache() -> None:
    """Forget every learnt shape (for tests and benchmarks)."""
    LAYOUTS.clear()


def _decode(buf, use_cache: bool) -> DecodeResult:
    events = []
    append = events.append
    malformed = unknown = 0
    done = False
    errors = []
    if type(buf) is not bytes:
        buf = bytes(buf)            # one copy; slicing bytes is cheaper later
    n = len(buf)
    off = 0
    get = LAYOUTS.layouts.get if use_cache else {}.get
    key_of = _KEYHEAD.unpack_from
    while off + 16 <= n:
        if off + 24 <= n:
            # Fast path: the shape key is the message length, type and flags,
            # nfgenmsg and the first attribute header; a compiled layout
            # checks every other header itself.
            ln, tf, nq = key_of(buf, off)
            if off + ln <= n:
                lst = get((ln, tf, nq))
                if lst is not None:
                    ev = lst[0](buf, off)
                    if ev is not None:
                        append(ev)
                        off += (ln + 3) & ~3
                        continue
                    for i in range(1, len(lst)):
                        fn = lst[i]
                        ev = fn(buf, off)
                        if ev is not None:      # move to front
                            lst[i] = lst[0]
                            lst[0] = fn
                            break
                    if ev is not None:
                        append(ev)
                        off += (ln + 3) & ~3
                        continue
        else:
            tf = nq = None
        ln, typ, flags, _seq, _pid = _nlmsghdr(buf, off)
        if ln < 16 or off + ln > n:
            malformed += 1          # truncated: the rest cannot be framed
            break
        if typ == MSG_CT_DELETE or typ == MSG_CT_NEW:
            if typ == MSG_CT_DELETE:
                kind = EV_DESTROY
            elif flags & NLM_F_MULTI:
                kind = EV_DUMP
            elif flags & NLM_F_CREATE:
                kind = EV_NEW
            else:
                kind = EV_UPDATE
            family = _FAMILIES.get(buf[off + 16]) if ln >= 20 else None
            if ln < 20:
                malformed += 1
            elif family is None:
                unknown += 1
            else:
                try:
                    fields, rec = _walk(buf, off, ln)
                except (_Malformed, _struct.error):
                    malformed += 1
                else:
                    append(_event_from(fields, kind, family))
                    if use_cache and tf is not None:
                        fn = _compile(buf, off, ln, rec, family, kind)
                        if fn is not None:
                            LAYOUTS.learn((ln, tf, nq), fn,
                                          _block_spec(buf, off, rec, family, kind))
        elif typ == NLMSG_DONE:
            done = True
        elif typ == NLMSG_ERROR:
            if ln < 20:
                malformed += 1
            else:
                errors.append(-_NLERR.unpack_from(buf, off + 16)[0])
        else:
            unknown += 1
        off += (ln + 3) & ~3
    if 0 < n - off < 16:
        malformed += 1              # a tail too short for a header
    return DecodeResult(events, malformed, unknown, done, errors)


def decode(buf) -> DecodeResult:
    """Decode every netlink message in ``buf`` (bytes, bytearray or memoryview).

    Never raises on bad input: truncated or inconsistent messages are counted
    in ``malformed``, messages of other types or families in ``unknown``.
    A truncated message ends the buffer (the rest cannot be framed).
    """
    return _decode(buf, True)


def decode_datagrams(buf, starts, ends, stride: int = 0) -> DecodeResult:
    """``decode`` over the datagrams ``buf[starts[i]:ends[i]]`` (lists or
    integer arrays), put back to back (each 4-aligned, as in one receive
    buffer) when they are not.  ``stride`` is ignored: it is there so that
    this and ``ctblocks.decode_blocks`` take a receive round alike."""
    if not isinstance(starts, list):
        starts, ends = starts.tolist(), ends.tolist()
    if not starts:
        return DecodeResult([], 0, 0, False, [])
    if all(((e + 3) & ~3) == s for e, s in zip(ends, starts[1:])):
        return decode(buf[starts[0]:ends[-1]])
    parts = []
    for s, e in zip(starts, ends):
        parts.append(buf[s:e])
        if (e - s) & 3:
            parts.append(bytes(-(e - s) & 3))
    return decode(b"".join(parts))


def decode_walk(buf) -> DecodeResult:
    """``decode`` without the layout cache: the plain walker (for tests)."""
    return _decode(buf, False)


def dump_request(family: int, seq: int) -> bytes:
    """The request for a dump of the table (IPCTNL_MSG_CT_GET with
    NLM_F_DUMP): ``family`` 0 for IPv4 and IPv6, or AF_INET / AF_INET6."""
    return (_NLMSGHDR.pack(20, MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
            + _struct.pack("BBH", family, 0, 0))


CTA_TIMEOUT = 7
NLA_F_NESTED = 0x8000
NLM_F_EXCL = 0x200


def _nla(typ: int, payload: bytes) -> bytes:
    return (_NLAHDR.pack(4 + len(payload), typ) + payload + bytes(-len(payload) % 4))


def create_request(seq: int, src: bytes, dst: bytes, proto: int, sport: int, dport: int,
                   timeout_s: int) -> bytes:
    """The request that makes a conntrack entry (IPCTNL_MSG_CT_NEW with
    NLM_F_CREATE|NLM_F_EXCL, acknowledged): ``src``/``dst`` packed IPv4
    addresses, a port protocol; the reply tuple is the original reversed.
    (``nfflowd check`` probes the kernel's events with one, in a private
    network namespace.)"""
    if len(src) != 4 or len(dst) != 4:
        raise ValueError("create_request takes IPv4 addresses")

    def tup(typ, a, b, sp, dp):
        ip = _nla(CTA_TUPLE_IP | NLA_F_NESTED, _nla(CTA_IP_V4_SRC, a) + _nla(CTA_IP_V4_DST, b))
        pr = _nla(CTA_TUPLE_PROTO | NLA_F_NESTED,
                  _nla(CTA_PROTO_NUM, bytes([proto])) + _nla(CTA_PROTO_SRC_PORT, _struct.pack(">H", sp))
                  + _nla(CTA_PROTO_DST_PORT, _struct.pack(">H", dp)))
        return _nla(typ | NLA_F_NESTED, ip + pr)
    body = (_struct.pack("BBH", _socket.AF_INET, 0, 0)
            + tup(CTA_TUPLE_ORIG, src, dst, sport, dport)
            + tup(CTA_TUPLE_REPLY, dst, src, dport, sport)
            + _nla(CTA_TIMEOUT, _struct.pack(">I", timeout_s)))
    return (_NLMSGHDR.pack(16 + len(body), MSG_CT_NEW,
                           NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, 0) + body)
