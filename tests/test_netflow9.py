"""NetFlow v9 encoder: byte-exact output, sequence and count rules, the size
bound, template refresh, and read-back by independent decoders (the PyPI
``netflow`` package, tshark's cflow dissector, a real nfcapd + nfdump).

The helpers here (sample records, expected values, decoders, the nfcapd
runner) are shared with test_ipfix.py."""

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from nfflowd.netflow9 import NetflowV9Encoder
from nfflowd.record import (END_ACTIVE_TIMEOUT, END_IDLE_TIMEOUT, END_OF_FLOW, ORIGINAL, REPLY,
                            Flow, FlowBatch, NatEvent)

from test_netflow5 import write_pcap

T0 = 1_700_000_000_000          # 2023-11-14 22:13:20 UTC, in epoch ms
BOOT = T0 - 3_600_000           # booted an hour earlier


def ip(s):
    return ipaddress.ip_address(s).packed


def mkflow(src, dst, sport, dport, post_src=None, post_dst=None, post_sport=None,
           post_dport=None, proto=6, packets=1, octets=100, start=T0, end=T0 + 1000,
           direction=ORIGINAL, reason=END_OF_FLOW, in_if=0, out_if=0, zone=0):
    s, d = ip(src), ip(dst)
    return Flow(4 if len(s) == 4 else 6, proto, s, d, sport, dport,
                ip(post_src) if post_src else s, ip(post_dst) if post_dst else d,
                sport if post_sport is None else post_sport,
                dport if post_dport is None else post_dport,
                packets, octets, start, end, direction, reason, in_if=in_if, out_if=out_if,
                zone=zone)


def mknat(src, dst, sport, dport, post_src, post_sport, proto=6, time_ms=T0, created=True,
          post_dst=None, post_dport=None):
    s, d = ip(src), ip(dst)
    return NatEvent(4 if len(s) == 4 else 6, proto, s, d, sport, dport, ip(post_src),
                    ip(post_dst) if post_dst else d, post_sport,
                    dport if post_dport is None else post_dport, time_ms, created)


def sample_flows():
    """Both directions of an SNAT connection, a DNAT one, ICMP, IPv6 with a
    translated source, ICMPv6, a port-less protocol and 64-bit counters.
    Interfaces (by hand): the SNAT pair crosses 2 and 3 (the reply's
    swapped), the DNAT one 3 and 4; the ICMP flow is the host's own (no
    ingress: flowDirection egress), the IPv6 pair in conntrack zone 7, the
    last one delivered to the host (no egress) from an index past 16 bits."""
    return [
        mkflow("198.51.100.7", "203.0.113.9", 50000, 80, post_src="203.0.113.1",
               post_sport=40000, packets=12, octets=3456, start=T0 - 5000, end=T0 - 10,
               in_if=2, out_if=3),
        mkflow("203.0.113.9", "203.0.113.1", 80, 40000, post_dst="198.51.100.7",
               post_dport=50000, packets=10, octets=12000, start=T0 - 4990, end=T0 - 11,
               direction=REPLY, in_if=3, out_if=2),
        mkflow("203.0.113.50", "203.0.113.1", 51000, 443, post_dst="198.51.100.20",
               post_dport=8443, proto=17, packets=3, octets=300, reason=END_IDLE_TIMEOUT,
               in_if=3, out_if=4),
        mkflow("198.51.100.7", "203.0.113.9", 0, 8 * 256 + 0, post_src="203.0.113.1", proto=1,
               packets=4, octets=336, out_if=3),
        mkflow("2001:db8::7", "2001:db8:1::9", 5353, 53, post_src="2001:db8:ffff::1",
               post_sport=1234, proto=17, packets=2**33, octets=2**40 + 5,
               reason=END_ACTIVE_TIMEOUT, in_if=5, out_if=6, zone=7),
        mkflow("2001:db8:1::9", "2001:db8:ffff::1", 0, 129 * 256 + 0, post_dst="2001:db8::7",
               proto=58, direction=REPLY, in_if=6, out_if=5, zone=7),
        mkflow("198.51.100.8", "203.0.113.10", 0, 0, post_src="203.0.113.2", proto=47,
               packets=7, octets=700, in_if=70000),
    ]


def sample_nat_events():
    return [
        mknat("198.51.100.7", "203.0.113.9", 50000, 80, "203.0.113.1", 40000,
              time_ms=T0 - 5000),
        mknat("198.51.100.7", "203.0.113.9", 50000, 80, "203.0.113.1", 40000,
              time_ms=T0 - 9, created=False),
        mknat("2001:db8::7", "2001:db8:1::9", 5353, 53, "2001:db8:ffff::1", 1234, proto=17,
              time_ms=T0 + 1),
    ]


def many_flows(n, start=T0):
    """n flows alternating IPv4 / IPv6; sport 1024+i gives the input order."""
    out = []
    for i in range(n):
        if i % 2:
            out.append(mkflow(f"2001:db8::{i:x}", "2001:db8:1::1", 1024 + i, 443,
                              post_src="2001:db8:ffff::1", post_sport=20000 + i,
                              packets=i + 1, octets=100 * (i + 1), start=start + i,
                              end=start + 2 * i))
        else:
            out.append(mkflow(f"198.51.100.{i % 250}", "203.0.113.9", 1024 + i, 80,
                              post_src="203.0.113.1", post_sport=20000 + i,
                              packets=i + 1, octets=100 * (i + 1), start=start + i,
                              end=start + 2 * i))
    return out


# -- expected values, written independently of the encoder's mapping ----------

def _addr(b):
    return ipaddress.ip_address(b)


def expected_flow(f, v9=True):
    """``v9``: an ICMPv6 record carries its type and code in ICMP_TYPE (32,
    icmpTypeCodeIPv4) too, as NetFlow v9 exporters do; IPFIX in 139 alone."""
    v6 = f.family == 6
    a = "IPv6" if v6 else "IPv4"
    d = {f"source{a}Address": _addr(f.src), f"destination{a}Address": _addr(f.dst),
         "protocolIdentifier": f.proto, "octetDeltaCount": f.octets,
         "packetDeltaCount": f.packets, "flowStartMilliseconds": f.start_ms,
         "flowEndMilliseconds": f.end_ms, "flowEndReason": f.end_reason,
         f"postNATSource{a}Address": _addr(f.post_src),
         f"postNATDestination{a}Address": _addr(f.post_dst),
         "ingressInterface": f.in_if, "egressInterface": f.out_if,
         # RFC 5102: 0 ingress, 1 egress (the host's own traffic, seen leaving)
         "flowDirection": 1 if f.in_if == 0 and f.out_if != 0 else 0}
    if f.zone:
        d.update(ingressVRFID=f.zone, egressVRFID=f.zone)
    if (f.family, f.proto) in ((4, 1), (6, 58)):
        d[f"icmpTypeCode{a}"] = f.dport
        if v9:
            d["icmpTypeCodeIPv4"] = f.dport
    else:
        d.update(sourceTransportPort=f.sport, destinationTransportPort=f.dport,
                 postNAPTSourceTransportPort=f.post_sport,
                 postNAPTDestinationTransportPort=f.post_dport)
    return d


def expected_nat(e, codes="rfc8158"):
    a = "IPv6" if e.family == 6 else "IPv4"
    create, delete = (4, 5) if codes == "rfc8158" else (1, 2)
    return {"observationTimeMilliseconds": e.time_ms,
            "natEvent": create if e.created else delete, "protocolIdentifier": e.proto,
            f"source{a}Address": _addr(e.src), f"destination{a}Address": _addr(e.dst),
            "sourceTransportPort": e.sport, "destinationTransportPort": e.dport,
            f"postNATSource{a}Address": _addr(e.post_src),
            f"postNATDestination{a}Address": _addr(e.post_dst),
            "postNAPTSourceTransportPort": e.post_sport,
            "postNAPTDestinationTransportPort": e.post_dport,
            # the event time as the record's first and last (nfdump's times)
            "flowStartMilliseconds": e.time_ms, "flowEndMilliseconds": e.time_ms}


def canon(records):
    """Order-independent form of a list of dicts."""
    return sorted(tuple(sorted((k, str(v)) for k, v in r.items())) for r in records)


# -- the PyPI netflow package as a decoder ----------------------------------------

def _iana_names():
    ipfix = pytest.importorskip("netflow.ipfix")
    return ipfix.IPFIXFieldTypes


def normalise(rec: dict) -> dict:
    """A decoded record with IANA names and ip_address values."""
    out = {}
    for k, v in rec.items():
        if "Address" in k:
            v = ipaddress.IPv6Address(v) if "IPv6" in k and isinstance(v, int) else \
                ipaddress.ip_address(v)
        out[k] = v
    return out


def pypi_decode_v9(datagrams, monkeypatch):
    """(headers, records) of v9 datagrams via the PyPI netflow parser.  Its v9
    name table lacks some IANA ids used by Cisco v9 exporters (136, 139, 153,
    230, and the VRF ids 234, 235): they are named after the IANA registry
    before parsing; the parsing itself is the package's."""
    netflow = pytest.importorskip("netflow")
    import netflow.v9 as v9
    fts = _iana_names()
    for fid in (136, 139, 153, 230, 234, 235):
        if fid not in v9.V9_FIELD_TYPES:
            monkeypatch.setitem(v9.V9_FIELD_TYPES, fid, fts.by_id(fid).name)
    by_name = {}
    for fid, name in v9.V9_FIELD_TYPES.items():
        ft = fts.by_id(fid)
        if ft is not None:
            by_name[name] = ft.name
    templates = {"netflow": {}, "ipfix": {}}
    headers, records = [], []
    for d in datagrams:
        p = netflow.parse_packet(d, templates)
        headers.append(p.header)
        records.append([normalise({by_name[k]: v for k, v in fl.data.items()})
                        for fl in p.flows])
    return headers, records


def hdr(d):
    """version, count, sys_uptime, unix_secs, sequence, source_id"""
    return struct.unpack("!HHIIII", d[:20])


def flowset_ids(d):
    off, out = 20, []
    while off < len(d):
        fid, ln = struct.unpack_from("!HH", d, off)
        out.append(fid)
        assert ln >= 4 and ln % 4 == 0      # v9: every FlowSet padded to 4 bytes
        off += ln
    assert off == len(d)
    return out


# -- byte-exact ---------------------------------------------------------------

FLOW4_TEMPLATE_RECORD = (
    "0100" "0011"                          # template 256, 17 fields
    "0008" "0004" "000c" "0004"            # sourceIPv4Address, destinationIPv4Address
    "0007" "0002" "000b" "0002"            # sourceTransportPort, destinationTransportPort
    "0004" "0001"                          # protocolIdentifier
    "0001" "0008" "0002" "0008"            # octetDeltaCount, packetDeltaCount (64 bits)
    "0098" "0008" "0099" "0008"            # flowStart/EndMilliseconds (152, 153)
    "0088" "0001"                          # flowEndReason (136)
    "00e1" "0004" "00e2" "0004"            # postNATSource/DestinationIPv4Address
    "00e3" "0002" "00e4" "0002"            # postNAPTSource/DestinationTransportPort
    "000a" "0004" "000e" "0004"            # ingressInterface, egressInterface
    "003d" "0001")                         # flowDirection (61)

FLOW4_DATA_RECORD = (
    "c6336407" "cb007109"                  # 198.51.100.7 -> 203.0.113.9
    "c350" "0050"                          # 50000 -> 80
    "06"                                   # TCP
    "0000000000000d80" "000000000000000c"  # 3456 octets, 12 packets
    "0000018bcfe55478" "0000018bcfe567f6"  # T0 - 5000, T0 - 10
    "03"                                   # end of flow
    "cb007101" "cb007109"                  # 203.0.113.1 -> 203.0.113.9
    "9c40" "0050"                          # 40000 -> 80
    "00000002" "00000003"                  # in 2, out 3
    "00")                                  # ingress


def test_byte_exact_first_datagram():
    enc = NetflowV9Encoder(source_id=0x01020304, records=("flows",))
    (d,) = enc.encode(FlowBatch.from_flows(sample_flows()[:1]), [], T0, BOOT)
    assert T0 - 5000 == 0x18bcfe55478 and T0 - 10 == 0x18bcfe567f6
    # the four flow templates, then their zone variants (two more fields
    # each); the ICMPv6 ones carry 139 and 32 (ICMP_TYPE)
    tset_len = 4 + 72 + 72 + 60 + 64 + 80 + 80 + 68 + 72
    expected_head = bytes.fromhex(
        "0009" "0009"              # version 9, count: 8 template records + 1 data record
        "0036ee80"                 # sysUptime 3600000 ms
        "6553f100"                 # unix_secs 1700000000
        "00000000"                 # sequence 0: the first export packet
        "01020304")                # source id
    assert d[:20] == expected_head
    assert d[20:24] == struct.pack("!HH", 0, tset_len)      # template FlowSet id 0
    assert d[24:24 + 72] == bytes.fromhex(FLOW4_TEMPLATE_RECORD)
    # its zone variant: 262, the same fields then ingressVRFID and egressVRFID
    zone4 = d[24 + 72 + 72 + 60 + 64:][:80]
    assert zone4 == bytes.fromhex("0106" "0013" + FLOW4_TEMPLATE_RECORD[8:]
                                  + "00ea" "0004" "00eb" "0004")
    data = d[20 + tset_len:]
    # data FlowSet: 4 + 67 bytes, padded with a zero to 72
    assert data == bytes.fromhex("0100" "0048" + FLOW4_DATA_RECORD + "00")
    assert len(d) == 20 + tset_len + 72
    # the next datagram: no templates, sequence 1, count 1
    (d2,) = enc.encode(FlowBatch.from_flows(sample_flows()[:1]), [], T0 + 1000, BOOT)
    assert hdr(d2) == (9, 1, 3_601_000, 1_700_000_001, 1, 0x01020304)
    assert d2[20:] == data


def test_nat_event_record_byte_exact():
    enc = NetflowV9Encoder(records=("nat_events",))
    (d,) = enc.encode(FlowBatch.from_flows([]), sample_nat_events()[:1], T0, BOOT)
    assert hdr(d)[1] == 2 + 1
    assert flowset_ids(d) == [0, 260]
    assert d[-56:] == bytes.fromhex(
        "0104" "0038"              # template 260, 4 + 50 bytes + 2 padding
        "0000018bcfe55478"         # observationTimeMilliseconds T0 - 5000
        "04" "06"                  # natEvent NAT44 session create, TCP
        "c6336407" "c350"          # 198.51.100.7:50000
        "cb007101" "9c40"          # -> 203.0.113.1:40000
        "cb007109" "0050"          # 203.0.113.9:80
        "cb007109" "0050"          # -> 203.0.113.9:80
        "0000018bcfe55478"         # flowStartMilliseconds: the event time
        "0000018bcfe55478"         # flowEndMilliseconds: the event time
        "0000")


# -- sequence, count, size bound -------------------------------------------------

def test_sequence_counts_datagrams_and_count_counts_all_records():
    enc = NetflowV9Encoder(max_size=1400)
    flows = many_flows(200)
    ds = enc.encode(FlowBatch.from_flows(flows), [], T0, BOOT)
    assert len(ds) > 3
    assert [hdr(d)[4] for d in ds] == list(range(len(ds)))
    assert enc.sequence == len(ds) and enc.datagrams_sent == len(ds)
    data_counts = enc.last_counts
    assert sum(data_counts) == 200 == enc.records_sent
    # count = template records (10 in the first datagram) + data records
    assert [hdr(d)[1] for d in ds] == [data_counts[0] + 10] + data_counts[1:]
    ds2 = enc.encode(FlowBatch.from_flows(flows[:3]), [], T0, BOOT)
    assert hdr(ds2[0])[4] == len(ds)


def test_sequence_wraps():
    enc = NetflowV9Encoder()
    enc.sequence = 2**32 - 1
    ds = enc.encode(FlowBatch.from_flows(many_flows(60)), [], T0, BOOT)
    assert [hdr(d)[4] for d in ds[:2]] == [2**32 - 1, 0]


@pytest.mark.parametrize("max_size", [148, 512, 1400, 9000])
def test_size_bound_nothing_lost(max_size, monkeypatch):
    flows = many_flows(700) + sample_flows()
    nats = sample_nat_events() * 50
    enc = NetflowV9Encoder(max_size=max_size)
    ds = enc.encode(FlowBatch.from_flows(flows), nats, T0, BOOT)
    assert all(len(d) <= max_size for d in ds)
    assert len(ds) >= (len(flows) * 67) // max_size
    assert [hdr(d)[4] for d in ds] == list(range(len(ds)))
    assert sum(enc.last_counts) == len(flows) + len(nats) == enc.records_sent
    headers, recs = pypi_decode_v9(ds, monkeypatch)
    assert [h.count for h in headers] == [hdr(d)[1] for d in ds]
    got = [r for rs in recs for r in rs]
    assert len(got) == len(flows) + len(nats)
    assert canon(got) == canon([expected_flow(f) for f in flows] +
                               [expected_nat(e) for e in nats])
    # input order is kept within each address family
    ports4 = [r["sourceTransportPort"] for r in got if "sourceIPv4Address" in r
              and 1024 <= r.get("sourceTransportPort", 0) < 2000]
    ports6 = [r["sourceTransportPort"] for r in got if "sourceIPv6Address" in r
              and 1024 <= r.get("sourceTransportPort", 0) < 2000]
    assert ports4 == list(range(1024, 1024 + 700, 2))
    assert ports6 == list(range(1025, 1024 + 700, 2))


def test_max_size_checked():
    # the header and the largest template or record: the zoned IPv6 record
    # (123 bytes, its set 128) and its template (80, its set 84): 148; the
    # templates go in as many datagrams as they need
    with pytest.raises(ValueError):
        NetflowV9Encoder(max_size=147)
    NetflowV9Encoder(max_size=148)
    with pytest.raises(ValueError):
        NetflowV9Encoder(max_size=123, records=("nat_events",))
    NetflowV9Encoder(max_size=124, records=("nat_events",))
    with pytest.raises(ValueError):
        NetflowV9Encoder(max_size=70000)
    with pytest.raises(ValueError):
        NetflowV9Encoder(source_id=2**32)
    with pytest.raises(ValueError):
        NetflowV9Encoder(records=("flows", "bogus"))
    with pytest.raises(ValueError):
        NetflowV9Encoder(nat_event_codes="cisco")


# -- templates: first, refresh by count and by time, forced ---------------------

def template_ids(d):
    """The template ids of a v9 datagram's template FlowSets, in order."""
    off, out = 20, []
    while off < len(d):
        fid, ln = struct.unpack_from("!HH", d, off)
        at = off + 4
        while fid == 0 and at + 4 <= off + ln:
            tid, n = struct.unpack_from("!HH", d, at)
            if tid == 0:
                break                       # padding
            out.append(tid)
            at += 4 + 4 * n
        off += ln
    return out


def test_templates_split_over_datagrams_when_they_do_not_fit():
    """Ten templates (the zone variants double the flow templates) do not
    fit a small datagram: those that do not fit the first datagram of data
    go first in datagrams of their own, each counted and numbered; a timer
    refresh sends them the same way."""
    enc = NetflowV9Encoder(max_size=300, template_refresh_seconds=60)
    ds = enc.encode(FlowBatch.from_flows(many_flows(2)), [], T0, BOOT)
    assert all(len(d) <= 300 for d in ds) and len(ds) >= 4
    ids = [template_ids(d) for d in ds]
    assert [t for i in ids for t in i] == [256, 257, 258, 259, 262, 263, 264, 265, 260, 261]
    assert [hdr(d)[1] for d in ds] == [len(i) + c for i, c in zip(ids, enc.last_counts)]
    assert [hdr(d)[4] for d in ds] == list(range(len(ds)))
    assert sum(enc.last_counts) == 2 and enc.template_sends == 1
    # the data follow every template they use
    first_data = min(k for k, d in enumerate(ds) if set(flowset_ids(d)) - {0})
    assert all(0 in flowset_ids(d) for d in ds[:first_data])
    refresh = enc.refresh_templates(T0 + 60_000, BOOT)
    assert [template_ids(d) for d in refresh] == [i for i in ids if i]
    assert all(flowset_ids(d) == [0] for d in refresh) and enc.template_sends == 2


def test_templates_refresh_by_count():
    enc = NetflowV9Encoder(template_refresh_packets=3, template_refresh_seconds=0)
    ds = []
    for i in range(8):
        ds += enc.encode(FlowBatch.from_flows(many_flows(2)), [], T0 + i, BOOT)
    has = [flowset_ids(d)[0] == 0 for d in ds]
    assert has == [True, False, False, True, False, False, True, False]
    assert enc.template_sends == 3


def test_templates_refresh_by_time():
    enc = NetflowV9Encoder(template_refresh_packets=0, template_refresh_seconds=60)
    times = [T0, T0 + 30_000, T0 + 59_999, T0 + 60_000, T0 + 61_000, T0 + 200_000,
             T0 + 100_000]      # the last: the clock went back
    has = []
    for t in times:
        (d,) = enc.encode(FlowBatch.from_flows(many_flows(1)), [], t, BOOT)
        has.append(0 in flowset_ids(d))
    assert has == [True, False, False, True, False, True, True]


def test_templates_refresh_defaults_and_within_a_batch():
    enc = NetflowV9Encoder()        # 20 datagrams / 60 s
    ds = enc.encode(FlowBatch.from_flows(many_flows(1000)), [], T0, BOOT)
    assert len(ds) > 40
    assert [i for i, d in enumerate(ds) if flowset_ids(d)[0] == 0] == list(range(0, len(ds), 20))


def test_force_templates_and_empty_encode():
    enc = NetflowV9Encoder()
    assert enc.encode(FlowBatch.from_flows([]), [], T0, BOOT) == []       # nothing to say, not even templates...
    ds = enc.encode(FlowBatch.from_flows(many_flows(1)), [], T0, BOOT)
    assert flowset_ids(ds[0])[0] == 0
    assert enc.encode(FlowBatch.from_flows([]), [], T0, BOOT) == []
    enc.force_templates()
    (d,) = enc.encode(FlowBatch.from_flows([]), [], T0, BOOT)              # ...unless forced: templates only
    assert flowset_ids(d) == [0] and hdr(d)[1] == 10
    (d,) = enc.encode(FlowBatch.from_flows(many_flows(1)), [], T0, BOOT)
    assert flowset_ids(d) == [256]


# -- record kinds, NAT codes, bad records -----------------------------------------

def test_record_kinds_selectable():
    flows, nats = sample_flows(), sample_nat_events()
    only_flows = NetflowV9Encoder(records=("flows",))
    ds = only_flows.encode(FlowBatch.from_flows(flows), nats, T0, BOOT)
    assert sum(only_flows.last_counts) == len(flows)
    assert hdr(ds[0])[1] == 8 + len(flows)
    assert not {260, 261} & set(flowset_ids(ds[0]))
    # the zoned IPv6 pair in the zone variants (263: IPv6, 265: ICMPv6)
    assert flowset_ids(ds[0]) == [0, 256, 258, 263, 265]
    only_nat = NetflowV9Encoder(records=("nat_events",))
    ds = only_nat.encode(FlowBatch.from_flows(flows), nats, T0, BOOT)
    assert sum(only_nat.last_counts) == len(nats)
    assert flowset_ids(ds[0]) == [0, 260, 261]
    assert only_nat.encode(FlowBatch.from_flows(flows), [], T0, BOOT) == []


@pytest.mark.parametrize("codes,expected", [("rfc8158", [4, 5, 4]), ("legacy", [1, 2, 1])])
def test_nat_event_codes(codes, expected, monkeypatch):
    enc = NetflowV9Encoder(records=("nat_events",), nat_event_codes=codes)
    ds = enc.encode(FlowBatch.from_flows([]), sample_nat_events(), T0, BOOT)
    _, recs = pypi_decode_v9(ds, monkeypatch)
    got = [r["natEvent"] for r in recs[0]]
    # IPv4 events come first (template 260), then IPv6 (261)
    assert got == expected
    assert canon(recs[0]) == canon([expected_nat(e, codes) for e in sample_nat_events()])


def test_bad_records_counted_not_raised():
    good = many_flows(3)
    bad_family = good[0]._replace(family=5)
    bad_port = good[1]._replace(sport=70000)
    negative = good[2]._replace(start_ms=-1)
    enc = NetflowV9Encoder()
    ds = enc.encode(FlowBatch.from_flows([good[0], bad_family, bad_port, negative, good[2]]), [], T0, BOOT)
    assert enc.invalid == 3 and sum(enc.last_counts) == 2 and enc.records_sent == 2
    assert len(ds) == 1
    # by reason, for the summaries (#15 item 14)
    assert enc.invalid_reasons == {"not IPv4 or IPv6": 1,
                                   "sourceTransportPort out of range": 1,
                                   "flowStartMilliseconds out of range": 1}


# -- independent decoders ------------------------------------------------------

def test_read_back_with_pypi_netflow(monkeypatch):
    flows, nats = sample_flows(), sample_nat_events()
    enc = NetflowV9Encoder(source_id=77)
    ds = enc.encode(FlowBatch.from_flows(flows), nats, T0, BOOT) + enc.encode(FlowBatch.from_flows(flows[:2]), [], T0 + 1500, BOOT)
    headers, recs = pypi_decode_v9(ds, monkeypatch)
    assert [(h.version, h.uptime, h.timestamp, h.sequence, h.source_id) for h in headers] == [
        (9, 3_600_000, 1_700_000_000, 0, 77), (9, 3_600_000, 1_700_000_000, 1, 77),
        (9, 3_601_500, 1_700_000_001, 2, 77)]
    assert canon(recs[0] + recs[1]) == canon([expected_flow(f) for f in flows] +
                                             [expected_nat(e) for e in nats])
    assert recs[2] == [expected_flow(f) for f in flows[:2]]
    # spot checks against the spec rather than against the helper
    r = recs[2][0]
    assert (str(r["sourceIPv4Address"]), r["sourceTransportPort"],
            str(r["postNATSourceIPv4Address"]), r["postNAPTSourceTransportPort"]) == (
        "198.51.100.7", 50000, "203.0.113.1", 40000)
    assert (r["ingressInterface"], r["egressInterface"], r["flowDirection"]) == (2, 3, 0)
    assert "ingressVRFID" not in r
    v6 = [x for x in recs[0] + recs[1] if x.get("sourceTransportPort") == 5353][0]
    assert (str(v6["postNATSourceIPv6Address"]), v6["octetDeltaCount"],
            v6["packetDeltaCount"], v6["flowEndReason"]) == (
        "2001:db8:ffff::1", 2**40 + 5, 2**33, 2)
    assert (v6["ingressVRFID"], v6["egressVRFID"], v6["ingressInterface"]) == (7, 7, 5)
    icmp = [x for x in recs[0] + recs[1] if x.get("icmpTypeCodeIPv4") == 0x0800][0]
    assert (icmp["ingressInterface"], icmp["egressInterface"], icmp["flowDirection"]) == (
        0, 3, 1)


def tshark_fields(pcap, port, fields, extra=()):
    cmd = ["tshark", "-r", str(pcap), "-d", f"udp.port=={port},cflow", *extra, "-T", "fields",
           "-E", "separator=|", "-E", "aggregator=;"]
    for f in fields:
        cmd += ["-e", f]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [dict(zip(fields, line.split("|"))) for line in res.stdout.splitlines()]


def tshark_problems(pcap, port):
    res = subprocess.run(["tshark", "-r", str(pcap), "-d", f"udp.port=={port},cflow",
                          "-Y", "_ws.malformed or _ws.expert"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")


@needs_tshark
def test_read_back_with_tshark(tmp_path):
    flows, nats = sample_flows(), sample_nat_events()
    enc = NetflowV9Encoder(source_id=77, max_size=600)
    ds = enc.encode(FlowBatch.from_flows(flows + many_flows(30)), nats, T0, BOOT)
    assert len(ds) > 3
    pcap = tmp_path / "v9.pcap"
    write_pcap(pcap, ds, dport=2055)
    assert tshark_problems(pcap, 2055) == ""
    fields = ["cflow.version", "cflow.count", "cflow.sequence", "cflow.source_id",
              "cflow.sysuptime", "cflow.unix_secs", "cflow.srcaddr", "cflow.srcaddrv6",
              "cflow.srcport", "cflow.octets", "cflow.packets",
              "cflow.post_natsource_ipv4_address", "cflow.post_nat_source_ipv6_address",
              "cflow.post_naptsource_transport_port", "cflow.nat_event",
              "cflow.icmp_type_code_ipv4", "cflow.flow_end_reason", "cflow.abstimestart",
              "cflow.template_id", "cflow.inputint", "cflow.outputint", "cflow.direction",
              "cflow.ingress_vrfid", "cflow.egress_vrfid"]
    rows = tshark_fields(pcap, 2055, fields)
    assert len(rows) == len(ds)
    assert [r["cflow.sequence"] for r in rows] == [str(i) for i in range(len(ds))]
    assert {r["cflow.source_id"] for r in rows} == {"77"}
    assert [int(r["cflow.count"]) for r in rows] == [hdr(d)[1] for d in ds]
    assert rows[0]["cflow.sysuptime"] == "3600.000000000"

    def col(k):
        return [v for r in rows for v in r[k].split(";") if v]
    # the templates (in two datagrams at this size): flows, zone variants, NAT
    assert col("cflow.template_id")[:10] == ["256", "257", "258", "259", "262", "263", "264",
                                             "265", "260", "261"]
    every = flows + many_flows(30)
    assert sorted(col("cflow.inputint")) == sorted(str(f.in_if) for f in every)
    assert sorted(col("cflow.outputint")) == sorted(str(f.out_if) for f in every)
    assert "70000" in col("cflow.inputint")
    # flowDirection 1 (egress) for the host's own ICMP flow only
    assert sorted(col("cflow.direction")) == ["0"] * (len(every) - 1) + ["1"]
    # the VRF ids of the zoned IPv6 pair
    assert col("cflow.ingress_vrfid") == col("cflow.egress_vrfid") == ["7", "7"]
    assert col("cflow.post_nat_source_ipv6_address").count("2001:db8:ffff::1") == \
        1 + 1 + 15      # the v6 sample flow, the v6 NAT event, 15 many_flows
    assert "203.0.113.1" in col("cflow.post_natsource_ipv4_address")
    assert sorted(col("cflow.nat_event")) == ["4", "4", "5"]
    # ICMP_TYPE (32): the ICMP flow's echo request and, as v9 exporters
    # fill it for ICMPv6 too, the ICMPv6 flow's echo reply (129.0)
    assert col("cflow.icmp_type_code_ipv4") == ["0x0800", "0x8100"]
    assert str(2**40 + 5) in col("cflow.octets")
    assert "Nov 14, 2023 22:13:15.000000000 UTC" in col("cflow.abstimestart")


# -- a real nfcapd ---------------------------------------------------------------

def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_taken(port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


@contextlib.contextmanager
def local_nfcapd(out: Path, port: int):
    """nfcapd on 127.0.0.1:``port`` writing into ``out``, bound before the
    body runs; stopped after it (SIGTERM writes its file)."""
    proc = subprocess.Popen(["nfcapd", "-w", str(out), "-b", "127.0.0.1", "-p", str(port),
                             "-t", "3600"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        end = time.monotonic() + 10
        while not _port_taken(port):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < end, "nfcapd did not bind"
            time.sleep(0.05)
        yield proc
        time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def nfdump_rows(out: Path, fmt: str, env=None, args=()) -> list[list[str]]:
    """nfdump's lines in ``fmt`` (split in words) of every closed file in
    ``out``; ``args``: more options (a filter, ``-t``)."""
    files = [p for p in out.rglob("nfcapd.*") if p.is_file() and "current" not in p.name]
    assert files, os.listdir(out)
    lines = []
    for f in files:
        r = subprocess.run(["nfdump", "-q", "-N", "-r", str(f), "-o", f"fmt:{fmt}", *args],
                           capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        lines += [line.split() for line in r.stdout.splitlines() if line.strip()]
    return lines


def nfcapd_files(tmp_path, datagrams) -> Path:
    """Run nfcapd on 127.0.0.1, send ``datagrams``, stop it (SIGTERM writes
    the file); the directory of its files."""
    port = free_udp_port()
    out = tmp_path / "nfcapd"
    out.mkdir()
    with local_nfcapd(out, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, ("127.0.0.1", port))
                time.sleep(0.005)
    return out


def nfcapd_collect(tmp_path, datagrams, fmt):
    """nfdump's lines in ``fmt`` of ``datagrams`` received by nfcapd."""
    return nfdump_rows(nfcapd_files(tmp_path, datagrams), fmt)


def check_nat_event_times(out: Path) -> None:
    """#15 item 18: nfdump lists the sample NAT events (legacy codes) at their
    event time (first and last), not at 1970-01-01, and its ``-t`` time
    window (first and last inside it) selects them."""
    utc = dict(os.environ, TZ="UTC")
    rows = nfdump_rows(out, NFDUMP_FMT, env=utc)
    got = sorted((r[0], r[1], r[2], r[3], r[4], r[13]) for r in rows if r[13] != "INVALID")
    day = "2023-11-14"
    assert got == [(day, "22:13:15.000", day, "22:13:15.000", "198.51.100.7", "ADD"),  # T0-5000
                   (day, "22:13:19.991", day, "22:13:19.991", "198.51.100.7", "DELETE"),
                   (day, "22:13:20.001", day, "22:13:20.001", "2001:db8::7", "ADD")]

    def window(t):
        return sorted(tuple(r) for r in nfdump_rows(out, "%sa %nevt", env=utc, args=("-t", t)))
    # no flow lies wholly inside these seconds: only the events do
    assert window("2023/11/14.22:13:15-2023/11/14.22:13:16") == [("198.51.100.7", "ADD")]
    assert window("2023/11/14.22:13:19-2023/11/14.22:13:20") == [("198.51.100.7", "DELETE")]


def check_interfaces(out: Path) -> None:
    """nfdump shows the sample flows' interfaces (``%in``, ``%out``), the
    direction they imply (``%dir``: I ingress, E egress) and the zoned
    pair's VRF ids (``%ivrf``, ``%evrf``, 0 where a record has none)."""
    rows = nfdump_rows(out, "%sa %sp %pr %in %out %dir %ivrf %evrf %nevt")
    got = sorted(tuple(r[:8]) for r in rows if r[8] == "INVALID")
    assert got == sorted([
        ("198.51.100.7", "50000", "6", "2", "3", "I", "0", "0"),
        ("203.0.113.9", "80", "6", "3", "2", "I", "0", "0"),
        ("203.0.113.50", "51000", "17", "3", "4", "I", "0", "0"),
        ("198.51.100.7", "0", "1", "0", "3", "E", "0", "0"),        # the host's own
        ("2001:db8::7", "5353", "17", "5", "6", "I", "7", "7"),
        ("2001:db8:1::9", "0", "58", "6", "5", "I", "7", "7"),
        ("198.51.100.8", "0", "47", "70000", "0", "I", "0", "0")])


needs_nfcapd = pytest.mark.skipif(not (shutil.which("nfcapd") and shutil.which("nfdump")),
                                  reason="needs nfcapd and nfdump")
NFDUMP_FMT = "%ts %te %sa %sp %da %dp %pr %pkt %byt %nsa %nsp %nevt"


@needs_nfcapd
def test_end_to_end_with_nfcapd(tmp_path):
    flows, nats = sample_flows(), sample_nat_events()
    # nfdump 1.7.1 names only the legacy natEvent codes (1 ADD, 2 DELETE)
    enc = NetflowV9Encoder(source_id=5, nat_event_codes="legacy", max_size=600)
    ds = enc.encode(FlowBatch.from_flows(flows), nats, T0, BOOT)
    assert len(ds) > 1
    rows = nfcapd_collect(tmp_path, ds, NFDUMP_FMT)
    assert len(rows) == len(flows) + len(nats)
    by_key = {(r[4], r[5], r[8], r[13]): r for r in rows}      # sa, sp, pr, nevt
    r = by_key[("198.51.100.7", "50000", "6", "INVALID")]
    assert r == ["2023-11-14", "22:13:15.000", "2023-11-14", "22:13:19.990",
                 "198.51.100.7", "50000", "203.0.113.9", "80", "6", "12", "3456",
                 "203.0.113.1", "40000", "INVALID"]
    r = by_key[("203.0.113.50", "51000", "17", "INVALID")]
    assert r[6:13] == ["203.0.113.1", "443", "17", "3", "300", "203.0.113.50", "51000"]
    # v9: nfdump decodes postNATSourceIPv6Address (281)
    r = by_key[("2001:db8::7", "5353", "17", "INVALID")]
    assert r[9:13] == [str(2**33), str(2**40 + 5), "2001:db8:ffff::1", "1234"]
    r = by_key[("198.51.100.7", "0", "1", "INVALID")]
    assert r[7] == "8.0"        # ICMP type.code
    # ICMPv6 too: nfdump 1.7.1 reads ICMP_TYPE (32) in v9, not 139 (#15 item 17)
    r = by_key[("2001:db8:1::9", "0", "58", "INVALID")]
    assert r[7] == "129.0"
    events = sorted((r[4], r[5], r[11], r[12], r[13]) for r in rows if r[13] != "INVALID")
    assert events == [("198.51.100.7", "50000", "203.0.113.1", "40000", "ADD"),
                      ("198.51.100.7", "50000", "203.0.113.1", "40000", "DELETE"),
                      ("2001:db8::7", "5353", "2001:db8:ffff::1", "1234", "ADD")]
    check_nat_event_times(tmp_path / "nfcapd")
    check_interfaces(tmp_path / "nfcapd")
