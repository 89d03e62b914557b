"""IPFIX encoder: byte-exact output, the sequence rule (data records, not
messages), the length field and size bound, template refresh, and read-back
by the PyPI ``netflow`` package, tshark, libfixbuf's ipfixDump and nfcapd."""

import shutil
import struct
import subprocess

import pytest

from nfflowd.ipfix import IpfixEncoder
from nfflowd.netflow9 import NetflowV9Encoder
from nfflowd.record import FlowBatch

from test_netflow5 import write_pcap
from test_netflow9 import (BOOT, FLOW4_DATA_RECORD, FLOW4_TEMPLATE_RECORD, NFDUMP_FMT, T0,
                           canon, check_interfaces, check_nat_event_times, expected_flow,
                           expected_nat,
                           many_flows, needs_nfcapd, needs_tshark, nfcapd_collect, normalise,
                           sample_flows, sample_nat_events, tshark_fields, tshark_problems)


def hdr(d):
    """version, length, export_time, sequence, domain"""
    return struct.unpack("!HHIII", d[:16])


def set_ids(d):
    off, out = 16, []
    while off < len(d):
        sid, ln = struct.unpack_from("!HH", d, off)
        out.append(sid)
        assert ln >= 4
        off += ln
    assert off == len(d) == hdr(d)[1]
    return out


def pypi_decode(messages):
    netflow = pytest.importorskip("netflow")
    templates = {"netflow": {}, "ipfix": {}}
    headers, records = [], []
    for m in messages:
        p = netflow.parse_packet(m, templates)
        headers.append(p.header)
        records.append([normalise(dict(fl.data)) for fl in p.flows])
    return headers, records


# -- byte-exact -------------------------------------------------------------------

def test_byte_exact_first_message():
    enc = IpfixEncoder(domain_id=0x01020304, records=("flows",))
    (m,) = enc.encode(FlowBatch.from_flows(sample_flows()[:1]), [], T0 + 999)
    # the four flow templates, then their zone variants
    tset_len = 4 + 72 + 72 + 60 + 60 + 80 + 80 + 68 + 68
    length = 16 + tset_len + 4 + 67
    assert m[:16] == bytes.fromhex(
        "000a" + f"{length:04x}"   # version 10, message length
        + "6553f100"               # export time 1700000000 (seconds, truncated)
        "00000000"                 # sequence: no data record sent before
        "01020304")                # observation domain
    assert m[16:20] == struct.pack("!HH", 2, tset_len)       # template set id 2
    assert m[20:92] == bytes.fromhex(FLOW4_TEMPLATE_RECORD)
    # data set: 4 + 67 bytes, no padding in IPFIX
    assert m[16 + tset_len:] == bytes.fromhex("0100" "0047" + FLOW4_DATA_RECORD)
    assert len(m) == length
    (m2,) = enc.encode(FlowBatch.from_flows(sample_flows()[:1] * 3), [], T0 + 1000)
    assert hdr(m2) == (10, 16 + 4 + 3 * 67, 1_700_000_001, 1, 0x01020304)


def test_same_records_as_v9_except_header_and_padding():
    flows, nats = sample_flows(), sample_nat_events()
    m = IpfixEncoder(records=("flows", "nat_events")).encode(FlowBatch.from_flows(flows), nats, T0)
    d = NetflowV9Encoder().encode(FlowBatch.from_flows(flows), nats, T0, BOOT)
    # the templates fill most of a first datagram: the last records go in a second
    assert len(m) == len(d) == 2

    def sets(bs, start, pad):
        out = []
        for b in bs:
            off = start
            while off < len(b):
                sid, ln = struct.unpack_from("!HH", b, off)
                body = b[off + 4:off + ln]
                out.append((sid, body.rstrip(b"\0") if pad else body))
                off += ln
        return out
    si, sv = sets(m, 16, False), sets(d, 20, True)
    assert [s for s, _ in si] == [2 if s == 0 else s for s, _ in sv] and sv[0][0] == 0

    def as_v9(sid, body):
        """What v9 sends for an IPFIX set: its ICMPv6 templates (259 and
        its zone variant 265) have ICMP_TYPE (32) after icmpTypeCodeIPv6
        (139), the records the same type*256+code twice."""
        if sid == 2:
            out, off = b"", 0
            while off < len(body):
                tid, n = struct.unpack_from("!HH", body, off)
                fields = body[off + 4:off + 4 + 4 * n]
                off += 4 + 4 * n
                if tid in (259, 265):
                    at = fields.index(struct.pack("!HH", 139, 2)) + 4
                    fields = fields[:at] + struct.pack("!HH", 32, 2) + fields[at:]
                    n += 1
                out += struct.pack("!HH", tid, n) + fields
            return out
        if sid in (259, 265):   # v6 src, dst, protocol, then the type and code
            size = 16 + 16 + 1 + 2 + 8 * 4 + 1 + 16 + 16 + 9 + (8 if sid == 265 else 0)
            return b"".join(body[i:i + 35] + body[i + 33:i + size]
                            for i in range(0, len(body), size))
        return body
    assert [as_v9(s, b).rstrip(b"\0") for s, b in si] == [b for _, b in sv]


# -- sequence, length, size bound ---------------------------------------------

def test_sequence_counts_data_records_not_messages():
    enc = IpfixEncoder(max_size=1400, domain_id=3)
    ds = enc.encode(FlowBatch.from_flows(many_flows(200)), sample_nat_events(), T0)
    counts = enc.last_counts
    assert len(ds) > 3 and sum(counts) == 203
    expected, acc = [], 0
    for c in counts:
        expected.append(acc)
        acc += c
    assert [hdr(m)[3] for m in ds] == expected
    assert enc.sequence == 203
    # template records do not count: a forced templates-only message keeps it
    enc.force_templates()
    (t,) = enc.encode(FlowBatch.from_flows([]), [], T0)
    assert set_ids(t) == [2] and hdr(t)[3] == 203
    (m,) = enc.encode(FlowBatch.from_flows(many_flows(1)), [], T0)
    assert hdr(m)[3] == 203 and enc.sequence == 204


def test_sequence_wraps():
    enc = IpfixEncoder()
    enc.sequence = 2**32 - 3
    ds = enc.encode(FlowBatch.from_flows(many_flows(60)), [], T0)
    assert hdr(ds[0])[3] == 2**32 - 3
    assert hdr(ds[1])[3] == (2**32 - 3 + enc.last_counts[0]) % 2**32


@pytest.mark.parametrize("max_size", [143, 600, 1400, 65535])
def test_size_bound_nothing_lost(max_size):
    flows = many_flows(700) + sample_flows()
    nats = sample_nat_events() * 50
    enc = IpfixEncoder(max_size=max_size)
    ds = enc.encode(FlowBatch.from_flows(flows), nats, T0)
    assert all(len(m) <= max_size and hdr(m)[1] == len(m) for m in ds)
    for m in ds:
        set_ids(m)
    assert sum(enc.last_counts) == len(flows) + len(nats)
    _, recs = pypi_decode(ds)
    assert [len(r) for r in recs] == enc.last_counts
    got = [r for rs in recs for r in rs]
    assert canon(got) == canon([expected_flow(f, v9=False) for f in flows] +
                               [expected_nat(e) for e in nats])
    ports6 = [r["sourceTransportPort"] for r in got if "sourceIPv6Address" in r
              and 1024 <= r.get("sourceTransportPort", 0) < 2000]
    assert ports6 == list(range(1025, 1024 + 700, 2))


def test_max_size_checked():
    with pytest.raises(ValueError):
        IpfixEncoder(max_size=142)      # header + the zoned IPv6 record (123) and its set: 143
    IpfixEncoder(max_size=143)
    with pytest.raises(ValueError):
        IpfixEncoder(max_size=65536)
    with pytest.raises(ValueError):
        IpfixEncoder(domain_id=-1)


# -- templates -------------------------------------------------------------------

def test_templates_refresh_by_count_and_time():
    enc = IpfixEncoder(template_refresh_packets=2, template_refresh_seconds=10)
    has = []
    for t in [T0, T0 + 1, T0 + 2, T0 + 3, T0 + 10_003, T0 + 10_004, T0 + 10_005]:
        (m,) = enc.encode(FlowBatch.from_flows(many_flows(1)), [], t)
        has.append(set_ids(m)[0] == 2)
    assert has == [True, False, True, False, True, False, True]
    enc = IpfixEncoder(template_refresh_packets=0, template_refresh_seconds=10)
    has = []
    for t in [T0, T0 + 9_999, T0 + 10_000, T0 + 10_001]:
        (m,) = enc.encode(FlowBatch.from_flows(many_flows(1)), [], t)
        has.append(set_ids(m)[0] == 2)
    assert has == [True, False, True, False]


def test_reset_templates_for_a_new_tcp_connection():
    enc = IpfixEncoder(template_refresh_packets=0, template_refresh_seconds=0)
    assert set_ids(enc.encode(FlowBatch.from_flows(many_flows(1)), [], T0)[0]) == [2, 256]
    assert set_ids(enc.encode(FlowBatch.from_flows(many_flows(1)), [], T0)[0]) == [256]
    enc.reset_templates()
    assert set_ids(enc.encode(FlowBatch.from_flows(many_flows(1)), [], T0)[0]) == [2, 256]
    assert set_ids(enc.encode(FlowBatch.from_flows(many_flows(1)), [], T0)[0]) == [256]


# -- independent decoders ------------------------------------------------------

def test_read_back_with_pypi_netflow():
    flows, nats = sample_flows(), sample_nat_events()
    enc = IpfixEncoder(domain_id=9)
    ms = enc.encode(FlowBatch.from_flows(flows), nats, T0) + enc.encode(FlowBatch.from_flows(flows[:2]), nats[:1], T0 + 2500)
    headers, recs = pypi_decode(ms)
    n = len(flows) + len(nats)
    k = len(recs[0])        # the records the templates left room for
    assert [(h.version, h.length, h.export_uptime, h.sequence_number, h.obervation_domain_id)
            for h in headers] == [(10, len(ms[0]), 1_700_000_000, 0, 9),
                                  (10, len(ms[1]), 1_700_000_000, k, 9),
                                  (10, len(ms[2]), 1_700_000_002, n, 9)]
    assert canon(recs[0] + recs[1]) == canon([expected_flow(f, v9=False) for f in flows] +
                                             [expected_nat(e) for e in nats])
    assert recs[2] == [expected_flow(f, v9=False) for f in flows[:2]] + [expected_nat(nats[0])]
    r = recs[2][0]
    assert (str(r["sourceIPv4Address"]), str(r["postNATSourceIPv4Address"]),
            r["postNAPTSourceTransportPort"], r["flowStartMilliseconds"]) == (
        "198.51.100.7", "203.0.113.1", 40000, 1_699_999_995_000)
    assert (r["ingressInterface"], r["egressInterface"], r["flowDirection"]) == (2, 3, 0)
    assert recs[2][2]["natEvent"] == 4
    v6 = [x for x in recs[0] + recs[1] if x.get("sourceTransportPort") == 5353][0]
    assert (v6["ingressVRFID"], v6["egressVRFID"]) == (7, 7)


@needs_tshark
def test_read_back_with_tshark(tmp_path):
    flows, nats = sample_flows(), sample_nat_events()
    enc = IpfixEncoder(domain_id=9, max_size=600)
    ms = enc.encode(FlowBatch.from_flows(flows + many_flows(30)), nats, T0)
    pcap = tmp_path / "ipfix.pcap"
    write_pcap(pcap, ms, dport=4739)
    assert tshark_problems(pcap, 4739) == ""
    fields = ["cflow.version", "cflow.len", "cflow.sequence", "cflow.od_id",
              "cflow.post_nat_source_ipv6_address", "cflow.post_natsource_ipv4_address",
              "cflow.nat_event", "cflow.observation_time_milliseconds", "cflow.icmp_ipv6_type",
              "cflow.flow_end_reason", "cflow.octets", "cflow.inputint", "cflow.outputint",
              "cflow.direction", "cflow.ingress_vrfid", "cflow.egress_vrfid"]
    rows = tshark_fields(pcap, 4739, fields)
    assert len(rows) == len(ms)
    assert [(r["cflow.version"], int(r["cflow.len"]), int(r["cflow.sequence"]), r["cflow.od_id"])
            for r in rows] == [(str(hdr(m)[0]), len(m), hdr(m)[3], "9") for m in ms]

    def col(k):
        return [v for r in rows for v in r[k].split(";") if v]
    assert col("cflow.post_nat_source_ipv6_address").count("2001:db8:ffff::1") == 1 + 1 + 15
    assert sorted(col("cflow.nat_event")) == ["4", "4", "5"]
    assert col("cflow.icmp_ipv6_type") == ["129"]
    assert "Nov 14, 2023 22:13:20.001000000 UTC" in col("cflow.observation_time_milliseconds")
    assert str(2**40 + 5) in col("cflow.octets")
    every = flows + many_flows(30)
    assert sorted(col("cflow.inputint")) == sorted(str(f.in_if) for f in every)
    assert sorted(col("cflow.outputint")) == sorted(str(f.out_if) for f in every)
    assert sorted(col("cflow.direction")) == ["0"] * (len(every) - 1) + ["1"]
    assert col("cflow.ingress_vrfid") == col("cflow.egress_vrfid") == ["7", "7"]


@pytest.mark.skipif(shutil.which("ipfixDump") is None, reason="needs ipfixDump (libfixbuf)")
def test_read_back_with_ipfixdump(tmp_path):
    flows, nats = sample_flows(), sample_nat_events()
    enc = IpfixEncoder(domain_id=9, max_size=600, template_refresh_packets=3)
    ms = enc.encode(FlowBatch.from_flows(flows + many_flows(30)), nats, T0)
    f = tmp_path / "out.ipfix"
    f.write_bytes(b"".join(ms))
    res = subprocess.run(["ipfixDump", "--in", str(f)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert "error" not in (res.stdout + res.stderr).lower()
    out = res.stdout
    n = len(flows) + 30 + len(nats)
    assert f"{len(ms)} Messages, {n} Data Records" in out
    for name in ("postNATSourceIPv6Address", "postNAPTSourceTransportPort", "natEvent",
                 "observationTimeMilliseconds", "flowStartMilliseconds", "icmpTypeCodeIPv4",
                 "icmpTypeCodeIPv6", "flowEndReason"):
        assert name in out
    assert "postNATSourceIPv6Address : 2001:0db8:ffff::0001" in " ".join(out.split())
    assert "flowStartMilliseconds : 2023-11-14 22:13:15.000" in " ".join(out.split())
    assert " ".join(out.split()).count("natEvent : 4") == 2
    text = " ".join(out.split())
    assert text.count("ingressVRFID : 7") == text.count("egressVRFID : 7") == 2
    assert "ingressInterface : 70000" in text and text.count("flowDirection : 1") == 1


@needs_nfcapd
def test_end_to_end_with_nfcapd(tmp_path):
    flows, nats = sample_flows(), sample_nat_events()
    enc = IpfixEncoder(domain_id=5, nat_event_codes="legacy", max_size=600)
    ms = enc.encode(FlowBatch.from_flows(flows), nats, T0)
    assert len(ms) > 1
    rows = nfcapd_collect(tmp_path, ms, NFDUMP_FMT)
    assert len(rows) == len(flows) + len(nats)
    by_key = {(r[4], r[5], r[8], r[13]): r for r in rows}
    r = by_key[("198.51.100.7", "50000", "6", "INVALID")]
    assert r == ["2023-11-14", "22:13:15.000", "2023-11-14", "22:13:19.990",
                 "198.51.100.7", "50000", "203.0.113.9", "80", "6", "12", "3456",
                 "203.0.113.1", "40000", "INVALID"]
    r = by_key[("2001:db8::7", "5353", "17", "INVALID")]
    # nfdump 1.7.1 does not decode postNATSourceIPv6Address from IPFIX: only
    # the port is checked here
    assert r[9:11] == [str(2**33), str(2**40 + 5)] and r[12] == "1234"
    r = by_key[("2001:db8:1::9", "0", "58", "INVALID")]
    assert r[7] == "129.0"
    events = sorted((r[4], r[5], r[12], r[13]) for r in rows if r[13] != "INVALID")
    assert events == [("198.51.100.7", "50000", "40000", "ADD"),
                      ("198.51.100.7", "50000", "40000", "DELETE"),
                      ("2001:db8::7", "5353", "1234", "ADD")]
    check_nat_event_times(tmp_path / "nfcapd")
    check_interfaces(tmp_path / "nfcapd")
