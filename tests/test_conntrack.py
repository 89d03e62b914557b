"""ctnetlink decoder (nfflowd.conntrack).

The decoder is checked on REAL kernel messages recorded into tests/data by
tools/record_testdata.sh (see tests/data/README.md), field by field against
pyroute2's independent decoding of the same bytes; then on cut, mutated and
random input; the layout cache against the plain walker.  The socket:
tests/test_netlink.py.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfflowd import conntrack as ct
from nfflowd.conntrack import (EV_DESTROY, EV_DUMP, EV_NEW, EV_UPDATE, IPS_DST_NAT,
                               IPS_SRC_NAT, CtEvent, CtTuple, DecodeResult, decode,
                               decode_walk)

DATA = Path(__file__).resolve().parent / "data"
NLHDR = struct.Struct("=IHHII")


def frames(path):
    """Datagrams of a capture file (u32 little-endian length + datagram)."""
    data = (DATA / path).read_bytes()
    out, off = [], 0
    while off < len(data):
        (n,) = struct.unpack_from("<I", data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    assert off == len(data), f"{path}: framing broken"
    return out


def split_messages(datagram):
    out, off = [], 0
    while off + 16 <= len(datagram):
        ln = struct.unpack_from("=I", datagram, off)[0]
        assert 16 <= ln <= len(datagram) - off
        out.append(datagram[off:off + ln])
        off += (ln + 3) & ~3
    return out


EVENT_DGRAMS = frames("ct_events.bin")
DUMP_DGRAMS = frames("ct_dump.bin")
ALL_MSGS = [m for d in EVENT_DGRAMS + DUMP_DGRAMS for m in split_messages(d)]
CT_MSGS = [m for m in ALL_MSGS if NLHDR.unpack_from(m)[1] >> 8 == 1]


# -- the oracle: pyroute2 ----------------------------------------------------

def _addr(s):
    return socket.inet_pton(socket.AF_INET6 if ":" in s else socket.AF_INET, s)


def pyroute2_expected(msg) -> CtEvent:
    """Decode one message with pyroute2 and map it to a CtEvent."""
    from pyroute2.netlink.nfnetlink.nfctsocket import nfct_msg
    m = nfct_msg(msg)
    m.decode()
    hdr = m["header"]
    if hdr["type"] == 0x102:
        kind = EV_DESTROY
    elif hdr["flags"] & 0x2:
        kind = EV_DUMP
    elif hdr["flags"] & 0x400:
        kind = EV_NEW
    else:
        kind = EV_UPDATE

    def tup(name):
        t = m.get_attr(name)
        ip, pr = t.get_attr("CTA_TUPLE_IP"), t.get_attr("CTA_TUPLE_PROTO")
        src = ip.get_attr("CTA_IP_V4_SRC") or ip.get_attr("CTA_IP_V6_SRC")
        dst = ip.get_attr("CTA_IP_V4_DST") or ip.get_attr("CTA_IP_V6_DST")
        proto = pr.get_attr("CTA_PROTO_NUM")
        if proto in (1, 58):
            p = "CTA_PROTO_ICMP_" if proto == 1 else "CTA_PROTO_ICMPV6_"
            sport = pr.get_attr(p + "ID")
            dport = pr.get_attr(p + "TYPE") * 256 + pr.get_attr(p + "CODE")
        else:
            sport = pr.get_attr("CTA_PROTO_SRC_PORT") or 0
            dport = pr.get_attr("CTA_PROTO_DST_PORT") or 0
        return CtTuple(_addr(src), _addr(dst), proto, sport, dport)

    def counters(name):
        c = m.get_attr(name)
        if c is None:
            return 0, 0
        return c.get_attr("CTA_COUNTERS_PACKETS"), c.get_attr("CTA_COUNTERS_BYTES")

    ts = m.get_attr("CTA_TIMESTAMP")
    op, ob = counters("CTA_COUNTERS_ORIG")
    rp, rb = counters("CTA_COUNTERS_REPLY")
    return CtEvent(
        kind=kind, family={2: 4, 10: 6}[m["nfgen_family"]],
        ct_id=m.get_attr("CTA_ID"), status=m.get_attr("CTA_STATUS"),
        orig=tup("CTA_TUPLE_ORIG"), reply=tup("CTA_TUPLE_REPLY"),
        orig_packets=op, orig_bytes=ob, reply_packets=rp, reply_bytes=rb,
        start_ns=ts.get_attr("CTA_TIMESTAMP_START") if ts else 0,
        stop_ns=(ts.get_attr("CTA_TIMESTAMP_STOP") or 0) if ts else 0,
        mark=m.get_attr("CTA_MARK") or 0, zone=m.get_attr("CTA_ZONE") or 0,
        event_ns=raw_event_time(msg))


def raw_event_time(msg) -> int:
    """CTA_TIMESTAMP_EVENT (27, top level, be64), which pyroute2 does not
    know: read from the attributes by hand; 0 if absent."""
    pos, end = 20, struct.unpack_from("=I", msg)[0]
    while pos + 4 <= end:
        alen, typ = struct.unpack_from("=HH", msg, pos)
        if typ & 0x3FFF == 27 and alen == 12:
            return struct.unpack_from(">Q", msg, pos + 4)[0]
        pos += (max(alen, 4) + 3) & ~3
    return 0


# -- real messages -----------------------------------------------------------

def test_recorded_data_covers_what_it_should():
    """The recording has every kind, family, protocol and NAT case the tests rely on."""
    evs = decode(b"".join(d + b"\0" * (-len(d) % 4) for d in EVENT_DGRAMS + DUMP_DGRAMS)).events
    kinds = {e.kind for e in evs}
    assert kinds == {EV_NEW, EV_UPDATE, EV_DESTROY, EV_DUMP}
    assert {(e.family, e.orig.proto) for e in evs} >= {
        (4, 6), (4, 17), (4, 1), (6, 6), (6, 17), (6, 58), (4, 253)}
    assert any(e.status & IPS_SRC_NAT for e in evs)
    assert any(e.status & IPS_DST_NAT for e in evs)
    destroys = [e for e in evs if e.kind == EV_DESTROY]
    assert any(e.start_ns and e.stop_ns > e.start_ns and e.orig_bytes for e in destroys)
    assert any(e.start_ns == 0 and e.orig_bytes == 0 for e in destroys)   # acct/tstamp off
    assert all(e.start_ns == 0 for e in evs if e.kind == EV_NEW)          # NEW carries none
    # Linux 6.14 on: the event's own time (CTA_TIMESTAMP_EVENT), with timestamps on
    assert any(e.event_ns for e in evs if e.kind == EV_NEW)
    assert any(e.event_ns and e.stop_ns and abs(e.event_ns - e.stop_ns) < 10**9
               for e in destroys)
    assert any(e.event_ns == 0 for e in evs if e.kind == EV_NEW)          # tstamp off


@pytest.mark.parametrize("idx", range(len(CT_MSGS)))
def test_real_message_matches_pyroute2(idx):
    msg = CT_MSGS[idx]
    exp = pyroute2_expected(msg)
    ct.clear_layout_cache()
    for dec in (decode_walk, decode, decode):   # walker, cache miss, cache hit
        res = dec(msg)
        assert res == DecodeResult([exp], 0, 0, False, [])
        ev = res.events[0]
        for f in CtEvent._fields:                 # field by field, for the message
            assert getattr(ev, f) == getattr(exp, f), f
        assert type(ev) is CtEvent and type(ev.orig) is CtTuple and type(ev.reply) is CtTuple


def test_icmp_ports_are_id_and_type_code():
    for e in decode(b"".join(CT_MSGS)).events:
        if e.orig.proto == 1 and e.kind != EV_DESTROY or e.orig.proto == 58:
            assert e.orig.dport in (8 * 256, 128 * 256)       # echo request
            assert e.reply.dport in (0, 129 * 256)            # echo reply
            assert e.orig.sport == e.reply.sport != 0          # the id


def test_datagrams_concatenated_decode_like_one_by_one():
    one_by_one = []
    done = 0
    for d in EVENT_DGRAMS + DUMP_DGRAMS:
        r = decode(d)
        assert r.malformed == r.unknown == 0 and r.errors == []
        one_by_one += r.events
        done += r.done
    buf = b"".join(d + b"\0" * (-len(d) % 4) for d in EVENT_DGRAMS + DUMP_DGRAMS)
    whole = decode(memoryview(bytearray(buf)))
    assert whole.events == one_by_one and whole.done and done == 1
    assert decode_walk(buf) == whole


def test_dump_file_ends_with_done():
    res = decode(b"".join(DUMP_DGRAMS))
    assert res.done and res.events and all(e.kind == EV_DUMP for e in res.events)


# -- cut and inconsistent input ----------------------------------------------

def test_every_prefix_is_counted_or_decoded():
    for msg in CT_MSGS:
        for k in range(len(msg) + 1):
            for dec in (decode, decode_walk):
                r = dec(msg[:k])
                if k == 0:
                    assert r == DecodeResult([], 0, 0, False, [])
                elif k < len(msg):
                    assert r.events == [] and r.malformed == 1, (k, r)
                else:
                    assert len(r.events) == 1 and r.malformed == 0


def test_shortened_nlmsg_len_never_raises():
    """Attributes cut by a smaller nlmsg_len: malformed, or an event from what is left."""
    for msg in CT_MSGS[:12]:
        full = decode_walk(msg).events[0]
        for ln in range(16, len(msg) + 1):
            m = bytearray(msg[:ln])
            struct.pack_into("=I", m, 0, ln)
            r = decode(bytes(m))
            assert r == decode_walk(bytes(m))
            assert len(r.events) + r.malformed == 1, (ln, r)
            if r.events:   # the tuples survived the cut
                assert r.events[0].orig == full.orig and r.events[0].reply == full.reply


def test_missing_tuple_is_malformed():
    msg = bytearray(CT_MSGS[0])
    # turn CTA_TUPLE_REPLY (type 2, the second attribute) into an unknown attribute
    alen = struct.unpack_from("=H", msg, 20)[0]
    pos = 20 + ((alen + 3) & ~3)
    assert struct.unpack_from("=H", msg, pos + 2)[0] & 0x3FFF == 2
    struct.pack_into("=H", msg, pos + 2, 0x8000 | 30)
    assert decode(bytes(msg)) == DecodeResult([], 1, 0, False, [])


def test_wrong_value_size_is_malformed():
    """CTA_ID (be32) of the wrong size: the message is inconsistent."""
    msg = bytearray(CT_MSGS[0])
    pos = 20
    while pos < len(msg):
        alen, typ = struct.unpack_from("=HH", msg, pos)
        if typ == 12:
            struct.pack_into("=H", msg, pos, alen - 1)
            break
        pos += (alen + 3) & ~3
    else:
        pytest.fail("no CTA_ID")
    assert decode(bytes(msg)).malformed == 1


# -- kinds and control messages ------------------------------------------------

@pytest.mark.parametrize("typ,flags,kind", [
    (0x102, 0, EV_DESTROY), (0x102, 0x2, EV_DESTROY),
    (0x100, 0x2, EV_DUMP), (0x100, 0x2 | 0x400, EV_DUMP),
    (0x100, 0x400 | 0x200, EV_NEW), (0x100, 0x400, EV_NEW),
    (0x100, 0, EV_UPDATE), (0x100, 0x200, EV_UPDATE),
])
def test_kind_mapping(typ, flags, kind):
    msg = bytearray(CT_MSGS[0])
    struct.pack_into("=HH", msg, 4, typ, flags)
    for _ in range(2):   # cache miss, then hit
        assert [e.kind for e in decode(bytes(msg)).events] == [kind]


def nlmsg(typ, payload=b"", flags=0):
    return NLHDR.pack(16 + len(payload), typ, flags, 1, 0) + payload


def test_done_error_ack_unknown():
    err = nlmsg(2, struct.pack("=i", -1) + nlmsg(0x101, b"\0" * 4))     # EPERM
    ack = nlmsg(2, struct.pack("=i", 0) + nlmsg(0x101, b"\0" * 4))
    done = nlmsg(3, struct.pack("=i", 0))
    expect = nlmsg(0x200, b"\x02\x00\x00\x00" + b"\0" * 8)   # expectation subsystem
    get = nlmsg(0x101, b"\x02\x00\x00\x00")                  # not an event type
    noop = nlmsg(1)
    r = decode(err + ack + CT_MSGS[0] + expect + get + noop + done)
    assert r.errors == [1, 0] and r.done and r.unknown == 3 and r.malformed == 0
    assert len(r.events) == 1


def test_other_family_is_unknown_and_short_ct_malformed():
    msg = bytearray(CT_MSGS[0])
    msg[16] = 7
    assert decode(bytes(msg)) == DecodeResult([], 0, 1, False, [])
    assert decode(nlmsg(0x102, b"\x02\0")).malformed == 1     # no room for nfgenmsg
    assert decode(nlmsg(2, b"\0\0")).malformed == 1           # error without errno
    assert decode(NLHDR.pack(8, 0x102, 0, 0, 0)).malformed == 1  # nlmsg_len < 16


def test_later_messages_survive_a_bad_one():
    bad = bytearray(CT_MSGS[0])
    struct.pack_into("=H", bad, 20, 3)     # first attribute length 3 < 4
    r = decode(bytes(bad) + CT_MSGS[1])
    assert r.malformed == 1 and len(r.events) == 1


# -- fuzzing ---------------------------------------------------------------------

def _sane(r, buf):
    assert isinstance(r, DecodeResult)
    assert r.malformed >= 0 and r.unknown >= 0
    n_msgs = len(buf) // 16 + 1
    assert len(r.events) + r.malformed + r.unknown + len(r.errors) <= n_msgs
    for e in r.events:
        assert e.family in (4, 6) and e.kind in (EV_NEW, EV_UPDATE, EV_DESTROY, EV_DUMP)
        assert isinstance(e.orig.src, bytes) and len(e.orig.src) in (4, 16)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(buf):
    r = decode(buf)
    _sane(r, buf)
    assert r == decode_walk(buf)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CT_MSGS), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)),
                                          min_size=1, max_size=6),
       st.integers(0, 3))
def test_fuzz_mutated_real_messages(msg, edits, extra):
    """Byte edits to real messages: never raises; the layout cache (warmed with
    the real shapes) agrees with the plain walker on every mutant."""
    m = bytearray(msg)
    for pos, val in edits:
        m[pos % len(m)] = val
    buf = bytes(m) + b"".join(CT_MSGS[:extra])
    decode(msg)                     # the real shape is in the cache
    r = decode(buf)
    _sane(r, buf)
    assert r == decode_walk(buf)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(CT_MSGS), st.integers(20, 300), st.binary(min_size=1, max_size=40))
def test_fuzz_spliced_real_messages(msg, at, junk):
    at = min(at, len(msg))
    m = bytearray(msg[:at] + junk + msg[at:])
    struct.pack_into("=I", m, 0, len(m))
    buf = bytes(m)
    r = decode(buf)
    _sane(r, buf)
    assert r == decode_walk(buf)


def test_layout_cache_is_bounded():
    ct.clear_layout_cache()
    base = CT_MSGS[0]
    for i in range(ct.LAYOUTS.MAX + 50):
        m = bytearray(base)
        struct.pack_into("=H", m, 18, i)      # nfgenmsg res_id: part of the key
        assert len(decode(bytes(m)).events) == 1
    assert ct.LAYOUTS.count <= ct.LAYOUTS.MAX
    assert sum(len(v) for v in ct.LAYOUTS.layouts.values()) == ct.LAYOUTS.count


# -- the event's own time (CTA_TIMESTAMP_EVENT) ----------------------------------

def with_attrs(msg, *attrs) -> bytes:
    """``msg`` with top-level attributes ``(type, payload)`` appended."""
    out = bytearray(msg)
    for typ, payload in attrs:
        out += struct.pack("=HH", 4 + len(payload), typ) + payload + bytes(-len(payload) % 4)
    struct.pack_into("=I", out, 0, len(out))
    return bytes(out)


def without_event_time(msg) -> bytes:
    """``msg`` with its CTA_TIMESTAMP_EVENT (if any) left out."""
    out, pos = bytearray(msg[:20]), 20
    while pos + 4 <= len(msg):
        alen, typ = struct.unpack_from("=HH", msg, pos)
        step = (alen + 3) & ~3
        if typ & 0x3FFF != ct.CTA_TIMESTAMP_EVENT:
            out += msg[pos:pos + step]
        pos += step
    struct.pack_into("=I", out, 0, len(out))
    return bytes(out)


def test_event_time_is_read_from_a_hand_built_message():
    """CTA_TIMESTAMP_EVENT (27, be64, top level: Linux's enum ctattr_type),
    appended to a recorded NEW and DESTROY that lack it, is the event's
    ``event_ns``, by the walker and by a learnt layout alike."""
    new = next(m for m in CT_MSGS if decode_walk(m).events[0].kind == EV_NEW)
    end = next(m for m in CT_MSGS if decode_walk(m).events[0].kind == EV_DESTROY)
    ct.clear_layout_cache()
    for msg in (new, end):
        bare = without_event_time(msg)
        plain = decode_walk(bare).events[0]
        assert plain.event_ns == 0
        for t in (1_795_452_592_438_400_369, 1, 2**64 - 1):
            m = with_attrs(bare, (ct.CTA_TIMESTAMP_EVENT, struct.pack(">Q", t)))
            for dec in (decode_walk, decode, decode):
                assert dec(m).events == [plain._replace(event_ns=t)]


def test_an_empty_top_level_attribute_is_padding():
    """A header-only attribute before a 64-bit one is the kernel's alignment
    padding on hosts that need it (typed CTA_TIMESTAMP_PAD, 3: CTA_STATUS at
    the top level): skipped, the message decoded."""
    msg = without_event_time(next(m for m in CT_MSGS
                                  if decode_walk(m).events[0].kind == EV_NEW))
    plain = decode_walk(msg).events[0]
    m = with_attrs(msg, (3, b""), (ct.CTA_TIMESTAMP_EVENT, struct.pack(">Q", 42)))
    ct.clear_layout_cache()
    for dec in (decode_walk, decode, decode):
        assert dec(m) == DecodeResult([plain._replace(event_ns=42)], 0, 0, False, [])
    # a value of the wrong size is still inconsistent
    bad = with_attrs(msg, (ct.CTA_TIMESTAMP_EVENT, struct.pack(">I", 42)))
    assert decode(bad).malformed == 1 and decode_walk(bad).malformed == 1
