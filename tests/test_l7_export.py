"""Application fields (``FlowBatch.l7``) in the IPFIX export: the enterprise
elements of ipfixprobe (CESNET 8057, Flowmon 39499), variable-length
strings per RFC 7011 section 7, a template per field set; hex-level, then
read back by libfixbuf's ipfixDump, tshark and nfcapd."""

import ipaddress
import json
import re
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from nfflowd import template as template_mod
from nfflowd.ie import L7_ELEMENTS
from nfflowd.ipfix import IpfixEncoder
from nfflowd.netflow9 import NetflowV9Encoder
from nfflowd.record import FlowBatch
from nfflowd.template import L7_TID_FIRST, TID_FLOW4, TID_FLOW6, encode_l7

from test_netflow5 import write_pcap
from test_netflow9 import NFDUMP_FMT, needs_nfcapd, needs_tshark, nfcapd_collect, tshark_fields, \
    tshark_problems
from test_wire import T0, fl

ELEMENTS_XML = Path(__file__).parent / "data" / "ipfix_l7_elements.xml"
JA3 = "e7d705a3286e19ea42f587b344ee6865"


def hdr(m):
    """version, length, export time, sequence, domain"""
    return struct.unpack_from("!HHIII", m)


def sets(m):
    """[(set id, body)] of one IPFIX message, checking the lengths add up."""
    off, out = 16, []
    while off < len(m):
        sid, ln = struct.unpack_from("!HH", m, off)
        assert ln >= 4
        out.append((sid, m[off + 4:off + ln]))
        off += ln
    assert off == len(m) == hdr(m)[1]
    return out


def template_ids(body):
    """The template ids of a template set's body (IPFIX)."""
    out, off = [], 0
    while off < len(body):
        tid, n = struct.unpack_from("!HH", body, off)
        off += 4
        for _ in range(n):
            eid = struct.unpack_from("!H", body, off)[0]
            off += 8 if eid & 0x8000 else 4
        out.append(tid)
    return out


def tls_flow(i=0, **kw):
    return fl(f"198.51.100.{7 + i}", "203.0.113.9", 40000 + i, 443, **kw)


def batch(flows, l7):
    b = FlowBatch.from_flows(flows)
    b.l7 = dict(l7)
    return b


# -- the elements -----------------------------------------------------------------

def test_every_contract_field_has_an_ipfixprobe_element():
    # the field names of the FlowBatch.l7 contract (COMMON19 / record.py)
    contract = ("tls_sni tls_alpn tls_version tls_ja3 tls_ja4 quic_sni quic_user_agent "
                "quic_version http_method http_host http_path http_user_agent http_status "
                "dns_qname dns_qtype dns_rcode dns_answers").split()
    assert sorted(L7_ELEMENTS) == sorted(contract)
    got = {k: (e.ie.enterprise, e.ie.id, e.ie.length) for k, e in L7_ELEMENTS.items()}
    # ipfixprobe's include/ipfixprobe/ipfix-elements.hpp (-1: variable length)
    assert got["tls_sni"] == (8057, 808, 65535)
    assert got["quic_sni"] == (8057, 890, 65535)
    assert got["http_host"] == (39499, 1, 65535)
    assert got["dns_qname"] == (8057, 2, 65535)
    assert got["tls_version"] == (39499, 333, 2)
    assert got["quic_version"] == (8057, 892, 4)
    assert got["dns_rcode"] == (8057, 1, 1)
    assert got["http_status"] == (39499, 12, 2)


# -- hex level --------------------------------------------------------------------

@pytest.mark.parametrize("n, head", [(0, "00"), (11, "0b"), (254, "fe"), (255, "ff00ff"),
                                     (300, "ff012c"), (65535, "ffffff")])
def test_varlen_lengths(n, head):
    fields, tail, bad = encode_l7({"tls_sni": "a" * n})
    assert (fields, bad) == (("tls_sni",), [])
    assert tail.hex() == head + "61" * n


def test_field_encodings():
    fields, tail, bad = encode_l7({"dns_answers": 3, "tls_ja3": JA3, "dns_rcode": 2,
                                   "quic_version": 1, "http_host": "ex\u00e4mple.org",
                                   "tls_version": 0x0304})
    # template order is L7_ELEMENTS' order, whatever the dict's
    assert fields == ("tls_version", "tls_ja3", "quic_version", "http_host", "dns_rcode",
                      "dns_answers")
    assert tail.hex() == ("0304" + "10" + JA3 + "00000001" + "0c" + "ex\u00e4mple.org".encode().hex()
                          + "02" + "0003")
    assert bad == []


@pytest.mark.parametrize("values, reason", [
    ({"tls_version": 70000}, "tls_version: out of range"),
    ({"dns_rcode": -1}, "dns_rcode: out of range"),
    ({"dns_qtype": "A"}, "dns_qtype: not an integer"),
    ({"tls_ja3": "xyz"}, "tls_ja3: not 32 hex digits"),
    ({"tls_ja3": "g" * 32}, "tls_ja3: not 32 hex digits"),
    ({"tls_sni": 5}, "tls_sni: not a string"),
    ({"tls_sni": b"x"}, "tls_sni: not a string"),
    ({"tls_sni": "\ud800"}, "tls_sni: not encodable"),
    ({"tls_sni": "a" * 65536}, "tls_sni: not encodable"),
    ({"smtp_domain": "x"}, "smtp_domain: no element"),
])
def test_bad_values_left_out(values, reason):
    fields, tail, bad = encode_l7(dict(values, dns_qname="example.org"))
    assert fields == ("dns_qname",) and tail == b"\x0bexample.org"
    assert bad == [reason]


def test_template_record_bytes():
    enc = IpfixEncoder()
    ms = enc.encode(batch([tls_flow()], {0: {"tls_sni": "example.com", "tls_version": 0x0303}}),
                    [], T0)
    assert len(ms) == 1
    (tset_id, tset), (sid, data) = sets(ms[0])
    assert tset_id == 2 and sid == L7_TID_FIRST
    base = next(t for t in enc.templates if t.id == TID_FLOW4)
    l7rec = base.record[4:] + bytes.fromhex("8328ffff00001f79" "814d000200009a4b")
    want = struct.pack("!HH", L7_TID_FIRST, len(base.names) + 2) + l7rec
    assert tset.endswith(want)
    assert template_ids(tset)[-1] == L7_TID_FIRST
    # the data record: the flow template's record, then the fields
    assert data == base.struct.pack(*enc._flow_get[TID_FLOW4](tls_flow())) + \
        bytes.fromhex("0b") + b"example.com" + bytes.fromhex("0303")
    assert hdr(ms[0])[3] == 0 and enc.sequence == 1 and enc.l7_unexported == {}


def test_records_without_fields_go_as_before():
    flows = [tls_flow(i) for i in range(6)]
    plain = IpfixEncoder().encode(FlowBatch.from_flows([f for i, f in enumerate(flows)
                                                        if i not in (1, 4)]), [], T0)
    enc = IpfixEncoder()
    ms = enc.encode(batch(flows, {1: {"tls_sni": "a.example"}, 4: {"tls_sni": "b.example"}}),
                    [], T0)
    got = sets(ms[0])
    want = sets(plain[0])
    # the same template set (the new template after it), the same data set of
    # the four plain records, then one set per record with fields
    assert got[0][1].startswith(want[0][1]) and got[1] == want[1]
    assert [s[0] for s in got] == [2, TID_FLOW4, L7_TID_FIRST, L7_TID_FIRST]
    assert hdr(ms[0])[3] == 0 and enc.sequence == 6


@pytest.mark.parametrize("columns", [False, True])
def test_a_template_per_field_set_ids_stable(columns):
    enc = IpfixEncoder(template_refresh_packets=0, template_refresh_seconds=0)
    v6 = fl("2001:db8::7", "2001:db8:1::53", 5353, 53, proto=17)
    flows = [tls_flow(0), tls_flow(1), v6, tls_flow(2), tls_flow(3, zone=3)]
    l7 = {0: {"tls_sni": "a.example", "tls_alpn": "h2"},
          1: {"tls_sni": "b.example", "tls_alpn": "http/1.1"},     # same fields: same template
          2: {"dns_qname": "c.example", "dns_qtype": 28},
          3: {"tls_sni": "d.example"},                             # other fields
          4: {"tls_sni": "e.example"}}                             # zone variant as its base
    b = batch(flows, l7)
    if columns:
        b = b.as_columns()
    first = enc.encode(b, [], T0)
    assert [(k, t.id) for k, t in enc._l7_templates.items()] == [
        ((TID_FLOW4, ("tls_sni", "tls_alpn")), 1024), ((TID_FLOW6, ("dns_qname", "dns_qtype")), 1025),
        ((TID_FLOW4, ("tls_sni",)), 1026), ((TID_FLOW4 + 6, ("tls_sni",)), 1027)]
    assert [s[0] for m in first for s in sets(m)] == [2, 1024, 1024, 1025, 1026, 1027]
    # next round: no templates (refresh off), the same ids
    again = enc.encode(b, [], T0 + 1000)
    assert [s[0] for m in again for s in sets(m)] == [1024, 1024, 1025, 1026, 1027]
    assert [s for m in again for s in sets(m)] == [s for m in first for s in sets(m)][1:]
    # a new field set in a later round is announced before its record
    later = enc.encode(batch([tls_flow()], {0: {"http_host": "f.example"}}), [], T0 + 2000)
    assert [s[0] for m in later for s in sets(m)] == [2, 1028]
    assert template_ids(sets(later[0])[0][1]) == [1028]


def test_tuples_and_columns_same_bytes():
    flows = [tls_flow(i) for i in range(5)] + [fl("2001:db8::7", "2001:db8:1::53", 5353, 53,
                                                  proto=17)]
    l7 = {2: {"tls_sni": "x.example", "tls_ja3": JA3}, 5: {"dns_qname": "y.example",
                                                          "dns_rcode": 3}}
    a = IpfixEncoder().encode(batch(flows, l7), [], T0)
    b = IpfixEncoder().encode(batch(flows, l7).as_columns(), [], T0)
    assert a == b


def test_refresh_carries_the_field_set_templates():
    enc = IpfixEncoder(template_refresh_packets=2, template_refresh_seconds=30)
    enc.encode(batch([tls_flow()], {0: {"tls_sni": "a.example"}}), [], T0)
    enc.encode(batch([tls_flow()], {0: {"dns_qname": "b.example"}}), [], T0)    # 2 datagrams
    ms = enc.encode(FlowBatch.from_flows([tls_flow()]), [], T0)
    tids = [t for sid, body in sets(ms[0]) if sid == 2 for t in template_ids(body)]
    assert tids[-2:] == [1024, 1025] and 256 in tids
    # the timer's templates-only datagram and the TCP start carry them too
    timer = enc.refresh_templates(T0 + 31_000)
    assert [t for m in timer for sid, body in sets(m) for t in template_ids(body)][-2:] == \
        [1024, 1025]
    assert template_ids(sets(enc.templates_message(T0))[0][1])[-2:] == [1024, 1025]
    # forced (a collector restarted): all again, no separate announcement
    enc.force_templates()
    ms = enc.encode(batch([tls_flow()], {0: {"tls_sni": "c.example"}}), [], T0)
    assert [s[0] for s in sets(ms[0])] == [2, 1024]


def test_new_template_opens_a_datagram_when_the_open_one_is_full():
    enc = IpfixEncoder(max_size=512, template_refresh_packets=0, template_refresh_seconds=0)
    enc.encode(FlowBatch.from_flows([tls_flow()]), [], T0)          # base templates sent
    plain = [tls_flow(i) for i in range(7)]             # 7 x 67 bytes: 489 of 512
    ms = enc.encode(batch(plain + [tls_flow(9)], {7: {"tls_sni": "x" * 40}}), [], T0)
    assert [[s[0] for s in sets(m)] for m in ms] == [[TID_FLOW4], [2, 1024]]
    assert all(len(m) <= 512 for m in ms)
    assert [hdr(m)[3] for m in ms] == [1, 8]


def test_record_too_large_goes_without_its_fields():
    enc = IpfixEncoder(max_size=512)
    ms = enc.encode(batch([tls_flow()], {0: {"tls_sni": "x" * 600, "tls_version": 0x0304}}),
                    [], T0)
    ids = [s[0] for m in ms for s in sets(m)]
    assert ids[-1] == TID_FLOW4 and set(ids[:-1]) == {2}      # the flow templates take two
    assert all(t.id < L7_TID_FIRST for t in enc.templates)
    assert enc.l7_unexported == {"record larger than max_size": 2}
    assert enc.records_sent == 1 and all(len(m) <= 512 for m in ms)


def test_bad_values_counted_record_kept():
    enc = IpfixEncoder()
    ms = enc.encode(batch([tls_flow(), tls_flow(1)],
                          {0: {"tls_version": 1 << 20, "tls_sni": "ok.example"},
                           1: {"tls_ja3": "nothex"}}), [], T0)
    assert [s[0] for m in ms for s in sets(m)] == [2, 1024, TID_FLOW4]
    assert enc.l7_unexported == {"tls_version: out of range": 1, "tls_ja3: not 32 hex digits": 1}
    assert enc.records_sent == 2


def test_template_limit(monkeypatch):
    monkeypatch.setattr(template_mod, "L7_TEMPLATES_MAX", 2)
    enc = IpfixEncoder()
    names = ["tls_sni", "http_host", "dns_qname"]
    ms = enc.encode(batch([tls_flow(i) for i in range(3)],
                          {i: {n: "x.example"} for i, n in enumerate(names)}), [], T0)
    assert [s[0] for m in ms for s in sets(m)] == [2, 1024, 1025, TID_FLOW4]
    assert enc.l7_unexported == {"too many field sets": 1}


def test_out_of_range_index_ignored():
    enc = IpfixEncoder()
    ms = enc.encode(batch([tls_flow()], {5: {"tls_sni": "x"}}), [], T0)
    assert [s[0] for m in ms for s in sets(m)] == [2, TID_FLOW4]


def test_netflow_v9_leaves_out_what_has_no_iana_element():
    flows = [tls_flow(0), tls_flow(1)]
    plain = NetflowV9Encoder().encode(FlowBatch.from_flows(flows), [], T0, T0 - 1000)
    enc = NetflowV9Encoder()
    got = enc.encode(batch(flows, {1: {"tls_sni": "a.example", "tls_version": 0x0304}}), [], T0,
                     T0 - 1000)
    assert got == plain         # the record joins the others, as if it had no fields
    assert enc.l7_unexported == {"tls_sni: no element in NetFlow v9": 1,
                                 "tls_version: no element in NetFlow v9": 1}


def test_netflow_v9_http_fixed_length():
    enc = NetflowV9Encoder()
    f = fl("198.51.100.21", "203.0.113.11", 50001, 80)
    ms = enc.encode(batch([f], {0: {"http_host": "h" * 70, "http_method": "GET",
                                    "http_status": 200, "dns_qname": "x.example"}}),
                    [], T0, T0 - 1000)
    assert len(ms) == 1
    m = ms[0]
    assert struct.unpack_from("!HH", m)[:2] == (9, len(enc.templates) + 1)
    off = 20
    sid, ln = struct.unpack_from("!HH", m, off)
    assert sid == 0
    tset = m[off:off + ln]
    base = next(t for t in enc.templates if t.id == TID_FLOW4)
    want = struct.pack("!HH", L7_TID_FIRST, len(base.names) + 3) + base.record[4:] + \
        bytes.fromhex("01cb0008" "01cc0040" "01c90002")           # 459/8, 460/64, 457/2
    assert want in tset
    sid, ln = struct.unpack_from("!HH", m, off + len(tset))
    data = m[off + len(tset) + 4:off + len(tset) + ln]
    rec = base.struct.pack(*enc._flow_get[TID_FLOW4](f)) + b"GET" + bytes(5) + b"h" * 64 + \
        struct.pack("!H", 200)
    assert sid == L7_TID_FIRST and data == rec + bytes(-(4 + len(rec)) % 4)
    assert off + len(tset) + ln == len(m)
    assert enc.l7_unexported == {"http_host: cut to 64 bytes": 1,
                                 "dns_qname: no element in NetFlow v9": 1}


@needs_tshark
def test_netflow_v9_read_back_with_tshark(tmp_path):
    flows, l7 = l7_sample()
    enc = NetflowV9Encoder(max_size=600)
    ms = enc.encode(batch(flows, l7), [], T0, T0 - 1000)
    pcap = tmp_path / "v9.pcap"
    write_pcap(pcap, ms, dport=2055)
    assert tshark_problems(pcap, 2055) == ""
    fields = ["cflow.http_request_method", "cflow.http_request_host",
              "cflow.http_request_target", "cflow.http_user_agent", "cflow.http_statuscode",
              "cflow.srcport"]
    rows = tshark_fields(pcap, 2055, fields)

    def col(k):
        return [v for r in rows for v in r[k].split(";") if v]
    assert col("cflow.http_request_method") == ["GET"]
    assert col("cflow.http_request_host") == ["web.example.org"]
    assert col("cflow.http_request_target") == [l7[4]["http_path"][:128]]
    assert col("cflow.http_user_agent") == ["curl/8.0"]
    assert col("cflow.http_statuscode") == ["404"]
    assert sorted(col("cflow.srcport")) == sorted(str(f.sport) for f in flows)


# -- independent readers ----------------------------------------------------------

def l7_sample():
    """Records with every field, one with none, IPv4 and IPv6, long strings."""
    flows = [tls_flow(0), tls_flow(1),
             fl("2001:db8::7", "2001:db8:1::53", 5353, 53, proto=17),
             fl("198.51.100.20", "203.0.113.10", 50000, 443, proto=17),
             fl("198.51.100.21", "203.0.113.11", 50001, 80),
             fl("203.0.113.11", "198.51.100.21", 80, 50001)]
    l7 = {0: {"tls_sni": "www.example.com", "tls_alpn": "h2", "tls_version": 0x0304,
              "tls_ja3": JA3, "tls_ja4": "t13d1516h2_8daaf6152771_b0da82dd1658"},
          2: {"dns_qname": "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61,
              "dns_qtype": 28, "dns_rcode": 3, "dns_answers": 2},
          3: {"quic_sni": "quic.example.net", "quic_user_agent": "Chrome/120", "quic_version": 1},
          4: {"http_method": "GET", "http_host": "web.example.org", "http_path": "/p?" + "q" * 300,
              "http_user_agent": "curl/8.0"},
          5: {"http_status": 404}}
    return flows, l7


def exported(tmp_path, flows, l7, **kw):
    """The encoder's messages sent over loopback UDP and received: what a
    collector gets, as a file of IPFIX messages."""
    enc = IpfixEncoder(domain_id=7, **kw)
    ms = enc.encode(batch(flows, l7), [], T0)
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        for m in ms:
            tx.sendto(m, rx.getsockname())
        got = [rx.recv(65535) for _ in ms]
    finally:
        rx.close()
        tx.close()
    assert got == ms
    path = tmp_path / "l7.ipfix"
    path.write_bytes(b"".join(got))
    return enc, got, path


@pytest.mark.skipif(shutil.which("ipfixDump") is None, reason="needs ipfixDump (libfixbuf)")
def test_read_back_with_ipfixdump(tmp_path):
    flows, l7 = l7_sample()
    enc, ms, path = exported(tmp_path, flows, l7, max_size=600)
    assert len(ms) > 1 and enc.l7_unexported == {}
    res = subprocess.run(["ipfixDump", "--in", str(path), "--element-file", str(ELEMENTS_XML),
                          "--hexdump=16"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "error" not in (out + res.stderr).lower() and "alien" not in out.lower()
    assert f"{len(ms)} Messages, {len(flows)} Data Records" in out
    text = " ".join(out.split())
    f0, f2, f3, f4, f5 = l7[0], l7[2], l7[3], l7[4], l7[5]
    for line in [
            f"(8057/808) TLSSNI : (len: 15) {f0['tls_sni']}",
            "(39499/337) tlsAlpn : (len: 2) h2",
            "(39499/333) tlsServerVersion : 772",
            f"(39499/357) tlsJa3Fingerprint : (len: 16) 0x{JA3}",
            f"(8057/809) tlsJa4 : (len: 36) {f0['tls_ja4']}",
            f"(8057/2) DNSName : (len: 253) {f2['dns_qname']}",
            "(8057/3) DNSQType : 28", "(8057/1) DNSRCode : 3", "(8057/14) DNSAnswers : 2",
            f"(8057/890) quicSNI : (len: 16) {f3['quic_sni']}",
            "(8057/891) quicUserAgent : (len: 10) Chrome/120", "(8057/892) quicVersion : 1",
            "(8057/200) httpMethod : (len: 3) GET",
            "(39499/1) httpHost : (len: 15) web.example.org",
            f"(39499/2) httpUrl : (len: 303) {f4['http_path']}",
            "(39499/20) httpUserAgent : (len: 8) curl/8.0",
            f"(39499/12) httpStatusCode : {f5['http_status']}"]:
        assert line in text, line
    # the records without fields, and the flow fields of those with
    assert text.count("sourceTransportPort : 40001") == 1
    assert "sourceIPv6Address : 2001:0db8::0007" in text


@needs_tshark
def test_read_back_with_tshark(tmp_path):
    # tshark 4.0 has no names for these PENs: it shows each field as an
    # enterprise private entry with its bytes, the lengths it read
    flows, l7 = l7_sample()
    enc, ms, _ = exported(tmp_path, flows, l7, max_size=600)
    pcap = tmp_path / "l7.pcap"
    write_pcap(pcap, ms, dport=4739)
    assert tshark_problems(pcap, 4739) == ""
    rows = tshark_fields(pcap, 4739, ["cflow.enterprise_private_entry"])
    got = [v for r in rows for v in r["cflow.enterprise_private_entry"].split(";") if v]
    # each record's fields, in template order, as bytes (no length prefix)
    want = []
    for i in sorted(l7):
        for name, el in L7_ELEMENTS.items():
            v = l7[i].get(name)
            if v is None:
                continue
            if el.type == "string":
                want.append(v.encode().hex())
            elif el.type == "octetArray":
                want.append(v)
            else:
                want.append(struct.pack("!" + el.ie.fmt, v).hex())
    assert got == want


@needs_nfcapd
def test_nfcapd_reads_the_flows_past_the_fields(tmp_path):
    # a collector that does not know the elements still steps over them
    flows, l7 = l7_sample()
    enc = IpfixEncoder(domain_id=5, max_size=600)
    ms = enc.encode(batch(flows, l7), [], T0)
    rows = nfcapd_collect(tmp_path, ms, NFDUMP_FMT)
    assert sorted((r[4], r[5], r[6], r[7]) for r in rows) == sorted(
        (str(ipaddress.ip_address(f.src)), str(f.sport), str(ipaddress.ip_address(f.dst)),
         str(f.dport)) for f in flows)


@pytest.mark.parametrize("extra, fits", [(0, True), (1, False)])
def test_record_fit_boundary(extra, fits):
    # a new template (4-byte set header, its record) and the record (4-byte
    # set header) filling a datagram exactly go; one byte more does not
    enc = IpfixEncoder(max_size=512, template_refresh_packets=0, template_refresh_seconds=0)
    enc.encode(FlowBatch.from_flows([tls_flow()]), [], T0)
    base = next(t for t in enc.templates if t.id == TID_FLOW4)
    n = 512 - 16 - (4 + len(base.record) + 8) - (4 + base.size + 3) + extra     # 3: ff + length
    assert n >= 255
    ms = enc.encode(batch([tls_flow()], {0: {"tls_sni": "s" * n}}), [], T0)
    if fits:
        assert [len(m) for m in ms] == [512] and [s[0] for s in sets(ms[0])] == [2, 1024]
        assert enc.l7_unexported == {}
    else:
        assert [s[0] for m in ms for s in sets(m)] == [TID_FLOW4]
        assert enc.l7_unexported == {"record larger than max_size": 1}


# -- the meter's export, end to end ------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
PCAPS = ROOT / "tests" / "data" / "pcaps"
_DUMP_LINE = re.compile(r"\((\d+/\d+)\)\s+(\w+) : (?:\(len: \d+\) )?(.*)$")

# capture, protocol, element (ipfixDump's name from ELEMENTS_XML), tshark's field
# and filter for the same values ("0x" + hex for the JA3, as ipfixDump prints it)
ORACLE = [
    ("tls.pcap", "tls", "TLSSNI", "tls.handshake.extensions_server_name", "tls.handshake"),
    ("tls.pcap", "tls", "tlsJa3Fingerprint", "tls.handshake.ja3", "tls.handshake.type == 1"),
    ("quic_initial-sample.pcap", "quic", "quicSNI", "tls.handshake.extensions_server_name",
     "quic"),
    ("http.pcap", "http", "httpHost", "http.host", "http.request"),
    ("http.pcap", "http", "httpMethod", "http.request.method", "http.request"),
    ("http.pcap", "http", "httpStatusCode", "http.response.code", "http.response"),
    ("dns.pcap", "dns", "DNSName", "dns.qry.name", "dns"),
    ("dns.pcap", "dns", "DNSRCode", "dns.flags.rcode", "dns.flags.response == 1"),
]


def meter_ipfix(tmp_path, capture, protocol) -> Path:
    """``nfflowd meter -r capture --l7 protocol`` into an IPFIX collector on
    127.0.0.1: its datagrams as a file."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        rx.bind(("127.0.0.1", 0))
        conf = tmp_path / "nfflowd.yaml"
        conf.write_text("export:\n  collectors:\n"
                        f"    - {{host: 127.0.0.1, port: {rx.getsockname()[1]}, version: 10}}\n"
                        "syslog:\n  enabled: false\n")
        r = subprocess.run([sys.executable, "-m", "nfflowd.cli", "-c", str(conf), "meter",
                            "-r", str(PCAPS / capture), "--l7", protocol],
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        got = []
        rx.settimeout(0.3)
        for _ in range(10_000):                     # bounded
            try:
                got.append(rx.recv(65535))
            except socket.timeout:
                break
    finally:
        rx.close()
    assert got
    path = tmp_path / "meter.ipfix"
    path.write_bytes(b"".join(got))
    return path


@pytest.mark.skipif(shutil.which("ipfixDump") is None or shutil.which("tshark") is None,
                    reason="needs ipfixDump (libfixbuf) and tshark")
@pytest.mark.parametrize("capture, protocol, name, field, filt", ORACLE,
                         ids=[f"{c}-{n}" for c, _, n, _, _ in ORACLE])
def test_meter_export_read_back_with_ipfixdump(tmp_path, capture, protocol, name, field, filt):
    from nfflowd.l7.inspect import missing_parsers
    if missing_parsers((protocol,)):
        pytest.skip(f"no {protocol} parser in this nfflowd (nfflowd.l7)")
    path = meter_ipfix(tmp_path, capture, protocol)
    res = subprocess.run(["ipfixDump", "--in", str(path), "--element-file", str(ELEMENTS_XML),
                          "--hexdump=16"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    exported = set()
    for line in res.stdout.splitlines():
        m = _DUMP_LINE.search(line.strip())
        if m and m.group(2) == name:
            exported.add(m.group(3).strip())
    # what the meter found (its JSON lines), every value of it exported
    r = subprocess.run([sys.executable, "-m", "nfflowd.cli", "meter", "-r", str(PCAPS / capture),
                        "--l7", protocol, "--print", "--format", "json"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    key = next(k for k, e in L7_ELEMENTS.items() if e.name == name)
    found = {str(o[key]) for o in map(json.loads, r.stdout.splitlines()) if o.get(key) is not None}
    if name == "tlsJa3Fingerprint":
        found = {"0x" + v for v in found}
    assert found and exported == found
    # and they are what tshark reads (the meter may miss some: payload cut
    # by the capture's snaplen, a handshake it does not reassemble)
    oracle = subprocess.run(["tshark", "-r", str(PCAPS / capture), "-Y", filt, "-T", "fields",
                             "-e", field, "-E", "occurrence=f"],
                            capture_output=True, text=True, timeout=60)
    assert oracle.returncode == 0, oracle.stderr
    want = {v for v in oracle.stdout.split("\n") if v and v != "<Root>"}
    if name == "tlsJa3Fingerprint":
        want = {"0x" + v for v in want}
    assert exported - {"", "<Root>"} <= want
    assert len(exported - {"", "<Root>"}) >= 0.8 * len(want)
