"""IPFIX biflow export (RFC 5103, nfflowd/biflow.py): the pairer (pairs,
lone records, hold expiry, initiator, VLAN, a key reused, ICMP, conntrack),
the biflow template and data records byte by byte (enterprise bit and PEN
29305), read back by libfixbuf's ipfixDump, and the collector key."""

import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from nfflowd.app import config
from nfflowd.biflow import (ARBITRARY, INITIATOR, BiflowIpfixEncoder, BiflowPairer,
                            biflow_direction, biflow_names, reverse_key)
from nfflowd.cli import main
from nfflowd.errors import ConfigError
from nfflowd.ie import REVERSE_PEN, element
from nfflowd.ipfix import IpfixEncoder
from nfflowd.record import END_FORCED, END_IDLE_TIMEOUT, END_OF_FLOW, ORIGINAL, REPLY, FlowBatch
from nfflowd.template import FLOW4, Template

from test_netflow9 import FLOW4_DATA_RECORD, T0, mkflow, sample_flows

S = 1_000_000_000        # ns


def meter_flow(src, dst, sport, dport, proto=17, start=T0, end=None, packets=1, octets=100,
               vlan=0, reason=END_IDLE_TIMEOUT):
    """A metered record (conn_id 0) as the meter makes them."""
    f = mkflow(src, dst, sport, dport, proto=proto, start=start,
               end=start if end is None else end, packets=packets, octets=octets,
               reason=reason)
    return f._replace(vlan=vlan)


def conntrack_flow(src, dst, sport, dport, conn_id, direction, packets=1, octets=100):
    return mkflow(src, dst, sport, dport, packets=packets, octets=octets,
                  direction=direction)._replace(conn_id=conn_id)


Q = meter_flow("198.51.100.7", "203.0.113.53", 40000, 53, start=T0, end=T0 + 2)
A = meter_flow("203.0.113.53", "198.51.100.7", 53, 40000, start=T0 + 30, end=T0 + 31,
               octets=300)


# -- the pairer ----------------------------------------------------------------------

def test_a_query_and_its_answer_make_one_pair_query_forward():
    p = BiflowPairer(30)
    assert p.add([Q], 10 * S) == []
    assert len(p) == 1
    assert p.add([A], 11 * S) == [(Q, A)]
    assert len(p) == 0 and p.pairs == 1
    assert p.expire(1000 * S) == [] and p.flush() == []


def test_the_initiator_is_forward_whatever_arrives_first():
    # the answer's record reaches the pairer first (it ended first)
    p = BiflowPairer(30)
    assert p.add([A], 10 * S) == []
    assert p.add([Q], 10 * S) == [(Q, A)]
    # and in one call
    assert BiflowPairer(30).add([A, Q], 0) == [(Q, A)]
    assert biflow_direction(Q, A) == INITIATOR


def test_a_lone_record_waits_its_hold_then_goes_alone():
    p = BiflowPairer(30)
    assert p.add([Q], 100 * S) == []
    assert p.next_deadline() == 130 * S
    assert p.expire(130 * S - 1) == []
    assert p.expire(130 * S) == [(Q, None)]
    assert len(p) == 0 and p.alone == 1 and p.next_deadline() is None
    # its answer after the hold finds nothing and waits in turn
    assert p.add([A], 131 * S) == []
    assert p.flush() == [(A, None)]
    assert biflow_direction(Q, None) == INITIATOR


def test_records_further_apart_than_the_hold_do_not_pair():
    late = A._replace(start_ms=Q.end_ms + 31_000, end_ms=Q.end_ms + 32_000)
    p = BiflowPairer(30)
    assert p.add([Q, late], 0) == []
    assert len(p) == 2
    assert p.flush() == [(Q, None), (late, None)]
    near = A._replace(start_ms=Q.end_ms + 29_000, end_ms=Q.end_ms + 29_500)
    assert BiflowPairer(30).add([Q, near], 0) == [(Q, near)]


def test_hold_zero_pairs_overlapping_records_only():
    p = BiflowPairer(0)
    assert p.add([Q], 5) == []
    assert p.expire(5) == [(Q, None)]
    overlapping = A._replace(start_ms=Q.start_ms + 1)
    assert p.add([Q, overlapping], 6) == [(Q, overlapping)]


def test_the_pairer_holds_at_most_max_held_records():
    """#15 item 13: a bound on the records waiting; beyond it the one whose
    hold ends first goes alone at once, counted (overflow, and alone); a
    record within the bound still pairs.  The entries of paired records do
    not pile up in the timer heap either."""
    qs = [Q._replace(sport=40000 + i) for i in range(5)]
    p = BiflowPairer(30, max_held=3)
    assert p.add(qs[:3], 1 * S) == []
    assert p.add(qs[3:4], 2 * S) == [(qs[0], None)]          # the oldest, early
    assert p.add(qs[4:], 3 * S) == [(qs[1], None)]
    assert (len(p), p.overflow, p.alone) == (3, 2, 2)
    answer = A._replace(dport=40003)
    assert p.add([answer], 4 * S) == [(qs[3], answer)]       # held: pairs
    assert p.add([A], 5 * S) == []                           # its query went alone
    assert p.flush() == [(qs[2], None), (qs[4], None), (A, None)]
    assert (p.overflow, p.alone, p.pairs) == (2, 5, 1)
    with pytest.raises(ValueError):
        BiflowPairer(30, max_held=0)
    # many pairs, each made while the hold runs: what they leave behind (their
    # entries in the timer heap) is dropped as it piles up
    import tracemalloc
    p = BiflowPairer(30, max_held=10)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20000):
            q, a = Q._replace(sport=i), A._replace(dport=i)
            assert p.add([q, a], i) == [(q, a)]
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(p) == 0 and p.overflow == 0 and p.pairs == 20000
    assert grown < 1_000_000          # 20000 records kept alive would be some 10 MB


def test_the_biflow_exporter_bound_follows_the_meter_table():
    from nfflowd.app.pipeline import BiflowExporter
    c = config.Collector("127.0.0.1", 9, version=10, biflow=True)
    cfg = config.Config(meter=config.MeterConfig(
        max_flows=7, interfaces=(config.MeterInterface("a"), config.MeterInterface("b"))))
    for kw, want in (({}, 14), ({"max_held": 3}, 3)):
        e = BiflowExporter(c, cfg, **kw)
        try:
            assert e.pairer.max_held == want
            assert e.summary()["biflow_overflow"] == 0
        finally:
            e.close()


def test_vlan_is_part_of_the_key():
    q10, a20 = Q._replace(vlan=10), A._replace(vlan=20)
    p = BiflowPairer(30)
    assert p.add([q10, a20], 0) == []
    a10 = A._replace(vlan=10)
    assert p.add([a10], 0) == [(q10, a10)]
    assert p.flush() == [(a20, None)]


def test_protocol_is_part_of_the_key():
    tcp = A._replace(proto=6)
    p = BiflowPairer(30)
    assert p.add([Q, tcp], 0) == []
    assert len(p) == 2


def test_a_reused_key_pairs_each_record_with_its_own_partner():
    # one 5-tuple used twice (a long flow cut by the active timeout, a port
    # reused): both records of each direction held at once
    hold = 100
    q1 = Q._replace(start_ms=T0, end_ms=T0 + 10)
    q2 = Q._replace(start_ms=T0 + 400_000, end_ms=T0 + 400_010)
    a1 = A._replace(start_ms=T0 + 5, end_ms=T0 + 12)
    a2 = A._replace(start_ms=T0 + 400_004, end_ms=T0 + 400_020)
    p = BiflowPairer(hold)
    assert p.add([q1, q2], 0) == []
    assert p.add([a2], 0) == [(q2, a2)]
    assert p.add([a1], 0) == [(q1, a1)]
    # both compatible: the one whose first packet is nearest
    q3 = Q._replace(start_ms=T0, end_ms=T0 + 1)
    q4 = Q._replace(start_ms=T0 + 20_000, end_ms=T0 + 20_001)
    a4 = A._replace(start_ms=T0 + 20_010, end_ms=T0 + 20_011)
    p = BiflowPairer(hold)
    assert p.add([q3, q4, a4], 0) == [(q4, a4)]
    assert p.flush() == [(q3, None)]


def test_ties_at_the_millisecond_and_biflow_direction():
    # same first-packet millisecond: the record to the lower (service) port
    # is forward, and biflowDirection says the direction is arbitrary
    a = A._replace(start_ms=Q.start_ms)
    assert BiflowPairer(30).add([a, Q], 0) == [(Q, a)]
    assert BiflowPairer(30).add([Q, a], 0) == [(Q, a)]
    assert biflow_direction(Q, a) == ARBITRARY
    # equal ports both ways: the one that reached the pairer first
    x = meter_flow("198.51.100.1", "198.51.100.2", 500, 500)
    y = meter_flow("198.51.100.2", "198.51.100.1", 500, 500)
    assert BiflowPairer(30).add([y, x], 0) == [(y, x)]
    assert biflow_direction(y, x) == ARBITRARY


def test_icmp_reverse_keys_and_a_tie():
    echo = meter_flow("198.51.100.7", "203.0.113.9", 0, 8 << 8, proto=1)
    reply = meter_flow("203.0.113.9", "198.51.100.7", 0, 0, proto=1)
    assert reverse_key(echo) == (4, 1, reply.src, reply.dst, 0, 0, 0)
    assert reverse_key(reply) == (4, 1, echo.src, echo.dst, 0, 8 << 8, 0)
    # same millisecond: the request is forward and that is the initiator
    assert BiflowPairer(30).add([reply, echo], 0) == [(echo, reply)]
    assert biflow_direction(echo, reply) == INITIATOR
    # ICMPv6 echo 128 <-> 129, code kept
    e6 = meter_flow("2001:db8::1", "2001:db8::2", 0, (128 << 8) | 0, proto=58)
    r6 = meter_flow("2001:db8::2", "2001:db8::1", 0, 129 << 8, proto=58)
    assert BiflowPairer(30).add([e6, r6], 0) == [(e6, r6)]
    # an error answers no ICMP flow: out at once, never held
    unreach = meter_flow("203.0.113.1", "198.51.100.7", 0, (3 << 8) | 1, proto=1)
    p = BiflowPairer(30)
    assert reverse_key(unreach) is None
    assert p.add([unreach], 0) == [(unreach, None)]
    assert len(p) == 0
    # a protocol without ports pairs on the addresses
    gre = meter_flow("198.51.100.7", "203.0.113.9", 0, 0, proto=47)
    gre_back = meter_flow("203.0.113.9", "198.51.100.7", 0, 0, proto=47, start=T0 + 1)
    assert BiflowPairer(30).add([gre_back, gre], 0) == [(gre, gre_back)]


def test_conntrack_records_pair_by_connection_and_are_never_held():
    o = conntrack_flow("198.51.100.7", "203.0.113.9", 50000, 80, 77, ORIGINAL, 5, 500)
    r = conntrack_flow("203.0.113.9", "198.51.100.7", 80, 50000, 77, REPLY, 4, 4000)
    lone = conntrack_flow("198.51.100.8", "203.0.113.9", 50001, 80, 78, ORIGINAL)
    p = BiflowPairer(30)
    assert p.add([r, lone, o], 0) == [(o, r), (lone, None)]
    assert len(p) == 0 and p.conntrack_pairs == 1
    assert biflow_direction(o, r) == INITIATOR


flows_st = st.lists(st.builds(
    lambda a, b, sp, dp, proto, vlan, start, dur: meter_flow(
        f"198.51.100.{a}", f"198.51.100.{b}", sp, dp, proto=proto, vlan=vlan,
        start=T0 + start, end=T0 + start + dur),
    st.integers(1, 3), st.integers(1, 3), st.sampled_from([53, 40000]),
    st.sampled_from([53, 40000]), st.sampled_from([6, 17]), st.sampled_from([0, 7]),
    st.integers(0, 200_000), st.integers(0, 5_000)), max_size=40)


@settings(max_examples=200, deadline=None)
@given(flows_st, st.integers(1, 8))
def test_every_record_comes_out_exactly_once(flows, chunks):
    """Whatever the records and however they arrive, each leaves exactly
    once; a pair is two reverse keys, forward first by time."""
    p = BiflowPairer(30)
    out = []
    now = 0
    for i in range(chunks):
        now += 20 * S
        out += p.add(flows[i::chunks], now)
        out += p.expire(now)
    out += p.flush()
    seen = [f for pair in out for f in pair if f is not None]
    assert sorted(seen) == sorted(flows)
    for fwd, rev in out:
        if rev is not None:
            assert reverse_key(fwd) == (rev.family, rev.proto, rev.src, rev.dst, rev.sport,
                                        rev.dport, rev.vlan)
            assert fwd.start_ms <= rev.start_ms
    assert len(p) == 0


# -- the encoder -----------------------------------------------------------------------

PEN = "00007279"            # 29305
BIFLOW4_TEMPLATE_RECORD = (
    "0100" "0016"                          # template 256, 22 fields
    "0008" "0004" "000c" "0004"            # sourceIPv4Address, destinationIPv4Address
    "0007" "0002" "000b" "0002"            # sourceTransportPort, destinationTransportPort
    "0004" "0001"                          # protocolIdentifier
    "0001" "0008" "0002" "0008"            # octetDeltaCount, packetDeltaCount
    "8098" "0008" + PEN +                  # reverseFlowStartMilliseconds: E bit | 152, PEN
    "8099" "0008" + PEN +                  # reverseFlowEndMilliseconds: E bit | 153, PEN
    "0098" "0008" "0099" "0008"            # flowStart/EndMilliseconds
    "0088" "0001"                          # flowEndReason
    "00e1" "0004" "00e2" "0004"            # postNATSource/DestinationIPv4Address
    "00e3" "0002" "00e4" "0002"            # postNAPTSource/DestinationTransportPort
    "000a" "0004" "000e" "0004"            # ingressInterface, egressInterface
    "003d" "0001"                          # flowDirection
    "8001" "0008" + PEN +                  # reverseOctetDeltaCount: E bit | 1, PEN
    "8002" "0008" + PEN +                  # reversePacketDeltaCount: E bit | 2, PEN
    "00ef" "0001")                         # biflowDirection (239)

FWD = sample_flows()[0]     # 198.51.100.7:50000 -> 203.0.113.9:80, FLOW4_DATA_RECORD
REV = mkflow("203.0.113.9", "198.51.100.7", 80, 50000, packets=10, octets=12000,
             start=T0 - 4990, end=T0 - 11, reason=END_IDLE_TIMEOUT)


def biflow4_data_record(rev_start, rev_end, reason, rev_octets, rev_packets, direction):
    fwd = bytes.fromhex(FLOW4_DATA_RECORD)
    # FLOW4_DATA_RECORD: keys and counters (29 bytes), times (16), reason, postNAT (12),
    # interfaces and direction (9): the forward's (the reverse's are them swapped)
    return (fwd[:29] + struct.pack("!QQ", rev_start, rev_end) + fwd[29:45]
            + bytes([reason]) + fwd[46:] + struct.pack("!QQB", rev_octets, rev_packets,
                                                       direction))


def test_reverse_elements_in_the_registry():
    for name, fwd in (("reverseOctetDeltaCount", "octetDeltaCount"),
                      ("reversePacketDeltaCount", "packetDeltaCount"),
                      ("reverseFlowStartMilliseconds", "flowStartMilliseconds"),
                      ("reverseFlowEndMilliseconds", "flowEndMilliseconds")):
        r, f = element(name), element(fwd)
        assert (r.id, r.length, r.fmt, r.enterprise) == (f.id, f.length, f.fmt, REVERSE_PEN)
    assert REVERSE_PEN == 29305
    assert element("biflowDirection") == (239, 1, "B", 0)


def test_template_record_with_enterprise_fields_byte_exact():
    t = Template(300, ("sourceIPv4Address", "reverseOctetDeltaCount", "biflowDirection"))
    assert t.record == bytes.fromhex(
        "012c" "0003"                      # template 300, 3 fields
        "0008" "0004"                      # sourceIPv4Address
        "8001" "0008" "00007279"           # enterprise bit | 1, 8 bytes, PEN 29305
        "00ef" "0001")                     # biflowDirection
    assert t.size == 4 + 8 + 1
    assert Template(256, biflow_names(FLOW4)).record == bytes.fromhex(BIFLOW4_TEMPLATE_RECORD)


def test_byte_exact_first_message_of_a_pair():
    enc = BiflowIpfixEncoder(domain_id=0x01020304, records=("flows",))
    (m,) = enc.encode_pairs([(FWD, REV)], [], T0 + 999)
    tset = bytes.fromhex(BIFLOW4_TEMPLATE_RECORD)
    assert m[:2] == b"\x00\x0a" and m[4:16] == bytes.fromhex("6553f100" "00000000" "01020304")
    assert m[16:18] == b"\x00\x02"                              # template set
    assert m[20:20 + len(tset)] == tset
    tset_len = struct.unpack_from("!H", m, 18)[0]
    assert T0 - 4990 == 0x18bcfe55482 and T0 - 11 == 0x18bcfe567f5
    record = biflow4_data_record(T0 - 4990, T0 - 11, END_OF_FLOW, 12000, 10, INITIATOR)
    assert len(record) == 67 + 8 * 4 + 1
    assert m[16 + tset_len:] == bytes.fromhex("0100" f"{4 + len(record):04x}") + record
    assert len(m) == struct.unpack_from("!H", m, 2)[0] == 16 + tset_len + 4 + len(record)
    # the sequence number counts biflow records (one per pair)
    (m2,) = enc.encode_pairs([(FWD, REV), (FWD, None)], [], T0 + 1000)
    assert struct.unpack_from("!I", m2, 8)[0] == 1
    (m3,) = enc.encode_pairs([(FWD, None)], [], T0 + 1001)
    assert struct.unpack_from("!I", m3, 8)[0] == 3


def test_lone_record_has_zero_reverse_values_and_its_own_reason():
    enc = BiflowIpfixEncoder(records=("flows",), template_refresh_packets=0,
                             template_refresh_seconds=0)
    enc.encode_pairs([], [], T0)
    enc._templates_sent = True          # no templates: data set only
    (m,) = enc.encode_pairs([(FWD, None)], [], T0)
    assert m[16:] == bytes.fromhex("0100" "0068") + biflow4_data_record(
        0, 0, END_OF_FLOW, 0, 0, INITIATOR)
    # the pair's end reason is that of the direction that ended last
    later = REV._replace(end_ms=FWD.end_ms + 1, end_reason=END_FORCED)
    (m,) = enc.encode_pairs([(FWD, later)], [], T0)
    assert m[16 + 4:] == biflow4_data_record(T0 - 4990, T0 - 9, END_FORCED, 12000, 10,
                                             INITIATOR)


def last_data_set(m):
    """(set id, body) of the last set of an IPFIX message."""
    off, last = 16, None
    while off < len(m):
        sid, ln = struct.unpack_from("!HH", m, off)
        last = (sid, m[off + 4:off + ln])
        off += ln
    return last


def test_same_forward_values_as_the_uniflow_encoder():
    """Every biflow record carries what the uniflow record of its forward
    flow carries (keys, counters, times, reason, postNAT, vlanId), in a
    template of the same id."""
    uni = IpfixEncoder(records=("flows",), vlan=True)
    bi = BiflowIpfixEncoder(records=("flows",), vlan=True)
    utpl = {t.id: t for t in uni.templates}
    btpl = {t.id: t for t in bi.templates}
    for f in [f._replace(vlan=7) for f in sample_flows()]:
        uid, ubody = last_data_set(uni.encode(FlowBatch.from_flows([f]), [], T0)[-1])
        bid, bbody = last_data_set(bi.encode_pairs([(f, None)], [], T0)[-1])
        assert uid == bid
        uvals = dict(zip(utpl[uid].names, utpl[uid].struct.unpack(ubody)))
        bvals = dict(zip(btpl[bid].names, btpl[bid].struct.unpack(bbody)))
        assert set(bvals) - set(uvals) == {"reverseOctetDeltaCount", "reversePacketDeltaCount",
                                           "reverseFlowStartMilliseconds",
                                           "reverseFlowEndMilliseconds", "biflowDirection"}
        assert {n: bvals[n] for n in uvals} == uvals
        assert uvals["vlanId"] == 7
        assert [bvals[n] for n in ("reverseOctetDeltaCount", "reversePacketDeltaCount",
                                   "reverseFlowStartMilliseconds",
                                   "reverseFlowEndMilliseconds", "biflowDirection")] == \
            [0, 0, 0, 0, INITIATOR]


def test_max_size_must_hold_the_biflow_templates():
    def least(cls):
        with pytest.raises(ValueError, match="max_size must be") as e:
            cls(records=("flows",), max_size=1)
        return int(str(e.value).split()[3].split("-")[0])
    uni, bi = least(IpfixEncoder), least(BiflowIpfixEncoder)
    # the bound is the header and the biggest record (the zoned IPv6 one),
    # 4 * 8 + 1 bytes longer in a biflow template (the templates go in as
    # many datagrams as they need)
    assert bi - uni == 4 * 8 + 1
    with pytest.raises(ValueError, match="max_size"):
        BiflowIpfixEncoder(records=("flows",), max_size=bi - 1)
    BiflowIpfixEncoder(records=("flows",), max_size=bi)


# -- ipfixDump (libfixbuf) as the reader; test_biflow_meter uses these too -----------

FIELD = re.compile(r"^\s*\(([\d/]+)\)\s+(\w+) : (.*?)\s*$")


TID = re.compile(r"^\s*count:\s*\d+\s+tid:\s+(\d+)")
OPTIONS_TIDS = range(512, 515)      # nfflowd.options: interface names, sampling, statistics


def ipfixdump(path: Path, datagrams) -> tuple[list[dict], str]:
    """The data records ipfixDump reads from ``datagrams`` (one file), as
    dicts of element name -> value text, and its whole output.  The options
    records (nfflowd.options) are left out: ``options_records(text)``
    counts them."""
    path.write_bytes(b"".join(datagrams))
    res = subprocess.run(["ipfixDump", "--in", str(path)], capture_output=True, text=True,
                         timeout=60)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text
    records, cur = [], None
    for line in res.stdout.splitlines():
        if line.startswith("--- "):
            cur = {} if line.startswith("--- data record") else None
            if cur is not None:
                records.append(cur)
            continue
        m = TID.match(line)
        if m and cur is not None and int(m.group(1)) in OPTIONS_TIDS:
            records.pop()
            cur = None
        m = FIELD.match(line)
        if m and cur is not None:
            cur[m.group(2)] = m.group(3)
    return records, text


def options_records(text: str) -> int:
    """The options data records in an ipfixDump listing."""
    return sum(int(m.group(1)) in OPTIONS_TIDS
               for m in (TID.match(line) for line in text.splitlines()) if m)


def assert_ipfixdump_clean(text: str) -> None:
    """ipfixDump's output complains of nothing."""
    for word in ("error", "warning", "out of sequence", "missing template", "illegal"):
        assert word not in text.lower(), text[-3000:]


def assert_reverse_elements_listed(text: str) -> None:
    """ipfixDump's output lists the reverse elements (PEN 29305) of our
    biflow template by their RFC 5103 names."""
    flat = " ".join(text.split())
    for eid, name in ((1, "reverseOctetDeltaCount"), (2, "reversePacketDeltaCount"),
                      (152, "reverseFlowStartMilliseconds"),
                      (153, "reverseFlowEndMilliseconds")):
        assert f"ent: 29305 id: {eid} type:" in flat and name in flat


@pytest.mark.skipif(shutil.which("ipfixDump") is None, reason="needs ipfixDump (libfixbuf)")
def test_read_back_with_ipfixdump(tmp_path):
    many = [(mkflow(f"198.51.100.{i}", "203.0.113.9", 40000 + i, 53, proto=17, packets=i,
                    octets=100 * i, start=T0 + i, end=T0 + i),
             mkflow("203.0.113.9", f"198.51.100.{i}", 53, 40000 + i, proto=17, packets=2 * i,
                    octets=1000 * i, start=T0 + 10 + i, end=T0 + 20 + i))
            for i in range(1, 40)]
    enc = BiflowIpfixEncoder(domain_id=9, max_size=1400, template_refresh_packets=2)
    ms = enc.encode_pairs(many + [(FWD, REV), (FWD, None)], [], T0)
    assert len(ms) > 2
    _records, text = ipfixdump(tmp_path / "bi.ipfix", ms)
    assert_ipfixdump_clean(text)
    assert f"{len(ms)} Messages, {len(many) + 2} Data Records" in text
    assert_reverse_elements_listed(text)
    flat = " ".join(text.split())
    # the 7th pair, as libfixbuf reads it
    rec = flat[flat.index("sourceIPv4Address : 198.51.100.7 "):]
    rec = rec[:rec.index("--- ")] if "--- " in rec else rec
    for want in ("sourceTransportPort : 40007", "octetDeltaCount : 700",
                 "packetDeltaCount : 7", "reverseOctetDeltaCount : 7000",
                 "reversePacketDeltaCount : 14",
                 "reverseFlowStartMilliseconds : 2023-11-14 22:13:20.017",
                 "reverseFlowEndMilliseconds : 2023-11-14 22:13:20.027",
                 "flowStartMilliseconds : 2023-11-14 22:13:20.007",
                 "biflowDirection : 1"):
        assert want in rec, (want, rec)


# -- configuration ------------------------------------------------------------------------

def test_the_collector_key():
    c = config.parse({"export": {"collectors": [
        {"host": "127.0.0.1", "port": 4739, "version": 10, "biflow": True},
        {"host": "127.0.0.1", "port": 4740, "version": 10}]}}).export.collectors
    assert [x.biflow for x in c] == [True, False]


@pytest.mark.parametrize("item, words", [
    ({"host": "127.0.0.1", "version": 9, "biflow": True}, "IPFIX (version 10) only"),
    ({"host": "127.0.0.1", "version": 5, "biflow": True}, "this collector is version 5"),
    ({"host": "127.0.0.1", "version": 10, "biflow": "yes"}, "expected true or false"),
])
def test_bad_biflow_key_names_file_and_key(item, words):
    with pytest.raises(ConfigError) as e:
        config.parse({"export": {"collectors": [item]}}, "/etc/x.yaml")
    assert [k for k, _ in e.value.problems] == ["export.collectors[0].biflow"]
    assert "/etc/x.yaml: export.collectors[0].biflow: " in str(e.value)
    assert words in str(e.value)


def test_meter_with_a_v9_biflow_collector_exits_2(tmp_path, capsys):
    p = tmp_path / "nfflowd.yaml"
    p.write_text("export:\n  collectors:\n"
                 "    - {host: 127.0.0.1, port: 2055, version: 9, biflow: true}\n")
    assert main(["-c", str(p), "meter", "-r", str(tmp_path / "none.pcap")]) == 2
    err = capsys.readouterr().err
    assert f"{p}: export.collectors[0].biflow: biflow records (RFC 5103) are IPFIX" in err


# -- the exporter, through the pipeline ---------------------------------------------------

class _Socket:
    def __init__(self, vlan: bool = False):
        self.vlan = vlan                # the meter's sink sends templates with vlanId
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def records(self, quiet=0.2):
        """The data records received so far, decoded by the biflow
        templates: dicts of element name -> value."""
        templates = {t.id: t for t in BiflowIpfixEncoder(records=("flows",),
                                                         vlan=self.vlan).templates}
        out = []
        self.sock.settimeout(quiet)
        for _ in range(10_000):                     # bounded
            try:
                m = self.sock.recv(65535)
            except socket.timeout:
                return out
            off = 16
            while off < len(m):
                sid, ln = struct.unpack_from("!HH", m, off)
                t = templates.get(sid)
                if t is not None:
                    for p in range(off + 4, off + ln - t.size + 1, t.size):
                        out.append(dict(zip(t.names, t.struct.unpack_from(m, p))))
                off += ln
        return out


def _pipeline(port, **kw):
    from nfflowd.app.pipeline import Pipeline
    cfg = config.parse({"export": {"collectors": [
        {"host": "127.0.0.1", "port": port, "version": 10, "biflow": True}]},
        "syslog": {"enabled": False}})
    p = Pipeline(cfg, **kw)
    p.open()
    return p


def test_pipeline_pairs_conntrack_at_once_and_expires_meter_records_by_wall_clock():
    rx = _Socket()
    pl = _pipeline(rx.port, biflow_hold=5)
    try:
        o = conntrack_flow("198.51.100.7", "203.0.113.9", 50000, 80, 77, ORIGINAL, 5, 500)
        r = conntrack_flow("203.0.113.9", "198.51.100.7", 80, 50000, 77, REPLY, 4, 4000)
        now = 1_800_000_000 * S
        pl.export(FlowBatch.from_flows([r, Q, o]), [], now, 1000)
        got = rx.records()
        assert [(x["sourceTransportPort"], x["packetDeltaCount"], x["reversePacketDeltaCount"],
                 x["reverseOctetDeltaCount"], x["biflowDirection"]) for x in got] == \
            [(50000, 5, 4, 4000, INITIATOR)]
        pl.tick(now + 5 * S - 1)
        assert rx.records() == []
        pl.tick(now + 5 * S)                        # Q's hold is over: alone
        got = rx.records()
        assert [(x["sourceTransportPort"], x["reversePacketDeltaCount"]) for x in got] == \
            [(40000, 0)]
        pl.export(FlowBatch.from_flows([A]), [], now + 6 * S, 1000)       # its answer, too late: held
        assert rx.records() == []
        s = pl.summary()
        name = f"127.0.0.1:{rx.port}/v10"
        assert (s[f"{name}.biflow_pairs"], s[f"{name}.biflow_alone"],
                s[f"{name}.biflow_held"], s[f"{name}.records"]) == (1, 1, 1, 2)
    finally:
        pl.close()                                  # flushes A alone
    got = rx.records()
    assert [(x["sourceTransportPort"], x["reversePacketDeltaCount"]) for x in got] == [(53, 0)]
    rx.sock.close()


def test_pipeline_record_clock_for_a_capture_file():
    """``nfflowd meter -r``: the hold runs on the records' time, not the
    wall clock (which would hold everything until the end): the meter's sink
    (``app.meters.Exporter`` for a capture file) passes the capture's clock."""
    from nfflowd.app.meters import Exporter
    from nfflowd.meter import FlowTable
    from nfflowd.record import FlowBatch

    def sink(*flows):                               # what the meter hands its sink
        exporter(FlowBatch.from_flows(list(flows)))
    rx = _Socket(vlan=True)
    cfg = config.parse({"export": {"collectors": [
        {"host": "127.0.0.1", "port": rx.port, "version": 10, "biflow": True}]},
        "syslog": {"enabled": False}})
    exporter = Exporter(cfg, False, None, FlowTable(inactive_timeout=30), record_clock=True)
    pl = exporter.pipeline
    pl.open()
    try:
        sink(Q)
        sink()                                      # time passes on the wall clock only
        assert rx.records() == []
        other = meter_flow("198.51.100.9", "203.0.113.9", 1, 2, start=Q.end_ms + 29_000)
        sink(other)                                 # records' clock: Q.end + 29 s
        assert rx.records() == []
        later = meter_flow("198.51.100.9", "203.0.113.9", 3, 4, start=Q.end_ms + 30_000)
        sink(later)                                 # Q.end + 30 s: Q's hold is over
        got = rx.records()
        assert [x["sourceTransportPort"] for x in got] == [40000]
    finally:
        pl.close()
    assert sorted(x["sourceTransportPort"] for x in rx.records()) == [1, 3]
    rx.sock.close()
