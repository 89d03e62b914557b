"""Options templates and records (nfflowd.options): the bytes, pinned; when
the encoders send them; the pipeline's interface names and counters; and
read-back by tshark, ipfixDump (libfixbuf), nfcapd/nfdump and pmacct's
nfacctd.

Regenerate the pinned bytes (only when a change of the wire format is
intended): ``python tests/test_options.py``, then paste the printed table.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import time

import pytest

from nfflowd.app import config
from nfflowd.app.pipeline import Pipeline
from nfflowd.ipfix import IpfixEncoder
from nfflowd.netflow9 import NetflowV9Encoder
from nfflowd.options import ExporterOptions, fixed_string, varlen
from nfflowd.record import END_OF_FLOW, ORIGINAL, Flow, FlowBatch

from test_netflow5 import write_pcap
from test_netflow9 import (free_udp_port, needs_nfcapd, needs_tshark, nfcapd_files,
                           tshark_fields, tshark_problems)
from test_pipeline_reload import Udp

T0 = 1_700_000_000_000
BOOT = T0 - 3_600_000
LINKS = {1: ("lo", ""), 2: ("eth0", "uplink to ISP"), 3: ("wan0", "")}
STATS = (5, 1000, 40, 3)
HEADER = {9: 20, 10: 16}


def flow(n: int = 0, sport: int = 40000) -> Flow:
    ip = ipaddress.ip_address
    return Flow(4, 6, ip("198.51.100.7").packed, ip("203.0.113.9").packed, sport + n, 80,
                ip("203.0.113.1").packed, ip("203.0.113.9").packed, 50000 + n, 80,
                5, 500, T0 - 2000, T0 - 1000, ORIGINAL, END_OF_FLOW)


def encoder(version: int, links=LINKS, stats=STATS, **kw):
    enc = (NetflowV9Encoder if version == 9 else IpfixEncoder)(7, **kw)
    opts = ExporterOptions(version, 7, stats=(lambda: stats) if stats else None)
    opts.set_links(links)
    enc.attach_options(opts)
    return enc


def encode(enc, flows, now=T0) -> list[bytes]:
    args = (FlowBatch.from_flows(flows), [], now) + ((BOOT,) if enc.VERSION == 9 else ())
    return enc.encode(*args)


# -- an independent reader of options (RFC 3954 section 6, RFC 7011 3.4.2.2, 7) --------

NAMES = {10: "ingressInterface", 34: "samplingInterval", 35: "samplingAlgorithm",
         40: "exportedOctetTotalCount", 41: "exportedMessageTotalCount",
         42: "exportedFlowRecordTotalCount", 82: "interfaceName", 83: "interfaceDescription",
         144: "exportingProcessId", 149: "observationDomainId", 166: "notSentFlowTotalCount",
         305: "samplingPacketInterval", 306: "samplingPacketSpace"}
V9_SCOPES = {1: "System", 2: "Interface"}


class Reader:
    """Options templates and records of a stream of datagrams of one version."""

    def __init__(self, version: int):
        self.version = version
        self.templates: dict[int, list] = {}     # tid -> [(name, length, scope)]
        self.records: list[tuple[int, dict]] = []
        self.sets: list[list[int]] = []           # set ids per datagram

    def feed(self, datagram: bytes) -> None:
        off, ids = HEADER[self.version], []
        while off < len(datagram):
            sid, ln = struct.unpack_from("!HH", datagram, off)
            assert ln >= 4 and off + ln <= len(datagram)
            ids.append(sid)
            body = datagram[off + 4:off + ln]
            if sid == (1 if self.version == 9 else 3):
                self._template(body)
            elif sid in self.templates:
                self._records(sid, body)
            off += ln
        assert off == len(datagram)
        self.sets.append(ids)

    def _template(self, b: bytes) -> None:
        if self.version == 9:
            tid, slen, olen = struct.unpack_from("!HHH", b)
            specs = [struct.unpack_from("!HH", b, 6 + 4 * i) for i in range((slen + olen) // 4)]
            ns = slen // 4
            self.templates[tid] = [(V9_SCOPES[t] if i < ns else NAMES[t], n, i < ns)
                                   for i, (t, n) in enumerate(specs)]
            assert all(x == 0 for x in b[6 + slen + olen:])          # padding
        else:
            tid, count, scount = struct.unpack_from("!HHH", b)
            specs = [struct.unpack_from("!HH", b, 6 + 4 * i) for i in range(count)]
            self.templates[tid] = [(NAMES[t], n, i < scount) for i, (t, n) in enumerate(specs)]
            assert len(b) == 6 + 4 * count

    def _records(self, tid: int, b: bytes) -> None:
        fields = self.templates[tid]
        off = 0
        fixed = sum(n for _f, n, _s in fields if n != 0xFFFF)
        while len(b) - off >= fixed and any(b[off:]):
            rec = {}
            for name, n, scope in fields:
                if n == 0xFFFF:
                    n = b[off]
                    off += 1
                    if n == 255:
                        n = struct.unpack_from("!H", b, off)[0]
                        off += 2
                raw = b[off:off + n]
                off += n
                key = ("scope:" if scope else "") + name
                if name in ("interfaceName", "interfaceDescription"):
                    rec[key] = raw.rstrip(b"\0").decode("utf-8")
                else:
                    rec[key] = int.from_bytes(raw, "big")
            self.records.append((tid, rec))
        assert not any(b[off:])                                       # padding only

    def by_template(self, tid: int) -> list[dict]:
        return [r for t, r in self.records if t == tid]


def read(version: int, datagrams) -> Reader:
    r = Reader(version)
    for d in datagrams:
        r.feed(d)
    return r


# tshark's cflow fields of each kind of options record: sampling, exporter
# statistics, interface name
OPTIONS_FIELDS = ("cflow.sampling_interval", "cflow.notsent_flows", "cflow.if_name")


def options_records(frame: dict) -> int:
    """The options records of a frame: ``frame`` maps OPTIONS_FIELDS to the
    lists of their values (tshark's fields, one value per record)."""
    return sum(len(frame[k]) for k in OPTIONS_FIELDS)


# -- the bytes, pinned -----------------------------------------------------------

def _case_first(version, links):
    enc = encoder(version, links)
    out = encode(enc, [flow()])
    return out[:enc.last_counts.index(1)]


def _case_between(version):
    """A TCP-like encoder (no refresh): the options due later go without
    their templates."""
    enc = encoder(version, template_refresh_packets=0, template_refresh_seconds=0)
    encode(enc, [flow()])
    enc.options.set_links({5: ("wg0", "tunnel \u00e9t\u00e9 " * 8)})
    return enc.refresh_templates(T0 + 1000, BOOT)


CASES = {
    "v9": lambda: _case_first(9, LINKS),
    "ipfix": lambda: _case_first(10, LINKS),
    "v9-no-links": lambda: _case_first(9, {}),
    "ipfix-no-links": lambda: _case_first(10, {}),
    "v9-between": lambda: _case_between(9),
    "ipfix-between": lambda: _case_between(10),
}

EXPECTED = {
    'ipfix': ('000a01946553f10000000000000000070003001a020000040001000a0004000a0004005300400052ffff0003001e02010005000100950004002200040023000101310004013200040003001e020200050001009000040029000800280008002a000800a600080201001500000007000000010100000001000000000202002800000007000000000000000500000000000003e8000000000000002800000000000000030200004f00000001000000016c6f0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000026c6f02000051000000020000000275706c696e6b20746f20495350000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000046574683002000051000000030000000377616e300000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000477616e30',),
    'ipfix-between': ('000a009d6553f10100000006000000070201001500000007000000010100000001000000000202002800000007000000000000000500000000000003e80000000000000028000000000000000302000050000000050000000574756e6e656c20c3a974c3a92074756e6e656c20c3a974c3a92074756e6e656c20c3a974c3a92074756e6e656c20c3a974c3a92074756e6e656c20c3a974c3a903776730',),
    'ipfix-no-links': ('000a00a36553f10000000000000000070003001a020000040001000a0004000a0004005300400052ffff0003001e02010005000100950004002200040023000101310004013200040003001e020200050001009000040029000800280008002a000800a600080201001500000007000000010100000001000000000202002800000007000000000000000500000000000003e800000000000000280000000000000003',),
    'v9': ('000900080036ee806553f10000000000000000070001001c02000004000c00020004000a000400530040005200100000000100200201000400100001000400220004002300010131000401320004000000010020020200040010000100040029000800280008002a000800a6000800000201001800000007000000010100000001000000000000000202002800000007000000000000000500000000000003e8000000000000002800000000000000030200005c00000001000000016c6f00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000006c6f00000000000000000000000000000200005c000000020000000275706c696e6b20746f20495350000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000657468300000000000000000000000000200005c000000030000000377616e3000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000077616e30000000000000000000000000',),
    'v9-between': ('000900030036f2686553f10100000002000000070201001800000007000000010100000001000000000000000202002800000007000000000000000500000000000003e8000000000000002800000000000000030200005c000000050000000574756e6e656c20c3a974c3a92074756e6e656c20c3a974c3a92074756e6e656c20c3a974c3a92074756e6e656c20c3a974c3a92074756e6e656c20c3a974c3a977673000000000000000000000000000',),
    'v9-no-links': ('000900050036ee806553f10000000000000000070001001c02000004000c00020004000a000400530040005200100000000100200201000400100001000400220004002300010131000401320004000000010020020200040010000100040029000800280008002a000800a6000800000201001800000007000000010100000001000000000000000202002800000007000000000000000500000000000003e800000000000000280000000000000003',),
}


def run_case(name: str) -> tuple:
    return tuple(d.hex() for d in CASES[name]())


@pytest.mark.parametrize("name", sorted(CASES))
def test_options_bytes(name):
    assert run_case(name) == EXPECTED[name]


def test_every_case_is_pinned():
    assert sorted(EXPECTED) == sorted(CASES)


# -- what the records say --------------------------------------------------------

@pytest.mark.parametrize("version", [9, 10])
def test_the_records_read_back(version):
    r = read(version, _case_first(version, LINKS))
    scope = "scope:System" if version == 9 else "scope:observationDomainId"
    assert r.by_template(513) == [{scope: 7, "samplingInterval": 1, "samplingAlgorithm": 1,
                                   "samplingPacketInterval": 1, "samplingPacketSpace": 0}]
    scope = "scope:System" if version == 9 else "scope:exportingProcessId"
    assert r.by_template(514) == [{scope: 7, "exportedMessageTotalCount": 5,
                                   "exportedOctetTotalCount": 1000,
                                   "exportedFlowRecordTotalCount": 40,
                                   "notSentFlowTotalCount": 3}]
    scope = "scope:Interface" if version == 9 else "scope:ingressInterface"
    assert r.by_template(512) == [
        {scope: 1, "ingressInterface": 1, "interfaceDescription": "lo", "interfaceName": "lo"},
        {scope: 2, "ingressInterface": 2, "interfaceDescription": "uplink to ISP",
         "interfaceName": "eth0"},
        {scope: 3, "ingressInterface": 3, "interfaceDescription": "wan0",
         "interfaceName": "wan0"}]
    # interfaceName: 16 bytes in v9, variable length in IPFIX; a record per set
    assert dict((n, ln) for n, ln, _s in r.templates[512])["interfaceName"] == (
        16 if version == 9 else 0xFFFF)
    assert [ids.count(512) for ids in r.sets] == [3]


def test_strings_fixed_and_variable():
    assert fixed_string("eth0", 6) == b"eth0\0\0"
    # cut at a character boundary: the two bytes of the last "é" do not fit
    assert fixed_string("ab\u00e9", 3) == b"ab\0"
    assert fixed_string("ab\u00e9", 4) == "ab\u00e9".encode()
    assert varlen(b"x" * 3) == b"\x03xxx"
    assert varlen(b"x" * 254)[:1] == b"\xfe"
    assert varlen(b"x" * 300)[:3] == b"\xff\x01\x2c" and len(varlen(b"x" * 300)) == 303


def test_bad_input_is_refused_with_a_reason():
    opts = ExporterOptions(10)
    with pytest.raises(ValueError, match="interface index 0"):
        opts.set_links({0: ("lo", "")})
    with pytest.raises(ValueError, match="v9"):
        ExporterOptions(5)
    with pytest.raises(ValueError, match="version 10 for a v9"):
        NetflowV9Encoder(1).attach_options(ExporterOptions(10))


# -- when they go ----------------------------------------------------------------

@pytest.mark.parametrize("version", [9, 10])
def test_options_precede_every_template_refresh(version):
    enc = encoder(version, template_refresh_packets=3)
    out = encode(enc, [flow(i) for i in range(200)])
    tset = 0 if version == 9 else 2
    r = read(version, out)
    opts_set = 1 if version == 9 else 3
    refreshes = [i for i, ids in enumerate(r.sets) if tset in ids]
    assert len(refreshes) >= 3
    for i in refreshes:
        # the datagram before every one carrying the flow templates: the options
        assert r.sets[i - 1][:3] == [opts_set] * 3 and enc.last_counts[i - 1] == 0
    assert len(r.by_template(513)) == len(r.by_template(514)) == len(refreshes)
    # the names with the first only (then on change, every 60 s, when forced)
    assert len(r.by_template(512)) == len(LINKS)
    assert sum(enc.last_counts) == 200
    if version == 10:
        # the options records count in the IPFIX sequence as data records
        seqs = [struct.unpack_from("!I", d, 8)[0] for d in out]
        n_records = [c or len(read(10, [d]).records) for c, d in zip(enc.last_counts, out)]
        assert seqs == [sum(n_records[:i]) for i in range(len(out))]
    else:
        counts = [struct.unpack_from("!H", d, 2)[0] for d in out]
        assert counts[0] == 3 + 2 + 3      # three templates, sampling, statistics, 3 links
    # forced templates (a collector restarted, a new connection): the names too
    enc.force_templates()
    again = read(version, encode(enc, [flow()], T0 + 1000))
    assert [x["interfaceName"] for x in again.by_template(512)] == ["lo", "eth0", "wan0"]


@pytest.mark.parametrize("version", [9, 10])
def test_changed_links_go_at_the_next_tick_and_once(version):
    enc = encoder(version)
    encode(enc, [flow()])
    assert enc.refresh_templates(T0 + 100, BOOT) == []
    enc.options.set_links(LINKS)                      # unchanged: nothing new
    assert enc.refresh_templates(T0 + 200, BOOT) == []
    enc.options.set_links({**LINKS, 9: ("vlan9", "")})
    out = enc.refresh_templates(T0 + 300, BOOT)
    r = read(version, out)
    assert [x["interfaceName"] for x in r.by_template(512)] == ["lo", "eth0", "wan0", "vlan9"]
    assert len(r.templates) == 3                      # UDP: with their templates
    assert enc.refresh_templates(T0 + 400, BOOT) == []


def test_over_tcp_options_follow_the_connection_and_their_period():
    enc = encoder(10, template_refresh_packets=0, template_refresh_seconds=0)
    first = read(10, encode(enc, [flow()]))
    assert len(first.templates) == 3 and len(first.by_template(514)) == 1
    assert enc.refresh_templates(T0 + 59_000) == []
    # later ones without their templates (they went at the connection's start) ...
    later = enc.refresh_templates(T0 + 60_000)
    assert [ids[0] for ids in read(10, later).sets] == [513]
    r = Reader(10)
    r.templates = first.templates
    r.feed(later[0])
    assert len(r.by_template(514)) == 1
    # ... and a new connection's templates message carries them: the records follow
    msg = enc.templates_message(T0 + 61_000)
    assert read(10, [msg]).templates.keys() == {512, 513, 514}
    again = encode(enc, [flow(1)], T0 + 61_500)
    assert enc.last_counts == [0, 1] and [s[0] for s in read(10, again[:1]).sets] == [513]


def test_many_interfaces_are_cut_into_datagrams():
    links = {i: (f"veth{i}", f"customer link {i}") for i in range(1, 201)}
    enc = encoder(10, links=links, max_size=600)
    out = encode(enc, [flow()])
    assert all(len(d) <= 600 for d in out)
    opts = out[:enc.last_counts.index(1)]
    assert len(opts) > 10
    r = read(10, opts)
    assert [x["interfaceName"] for x in r.by_template(512)] == [f"veth{i}" for i in range(1, 201)]
    assert [3 in ids for ids in r.sets] == [True] + [False] * (len(opts) - 1)


# -- the pipeline: links and counters -------------------------------------------

def test_pipeline_sends_links_and_its_counters(tmp_path):
    v9, ipfix = Udp(), Udp()
    cfg = config.parse({"export": {"collectors": [
        {"host": "127.0.0.1", "port": 9, "version": 5},
        {"host": "127.0.0.1", "port": v9.port, "version": 9},
        {"host": "127.0.0.1", "port": ipfix.port, "version": 10}]},
        "syslog": {"enabled": False}})
    p = Pipeline(cfg)
    p.open()
    try:
        p.set_links(LINKS)
        now_ns = T0 * 1_000_000
        # two good flows and one the encoders refuse (a port out of range)
        p.export(FlowBatch.from_flows([flow(0), flow(1), flow(0, sport=70000)]), [], now_ns,
                 3_600_000)
        p.set_links({**LINKS, 4: ("wan1", "backup")})
        p.tick(now_ns + 1_000_000)
        got9, got10 = v9.recv_all(), ipfix.recv_all()
    finally:
        p.close()
        v9.sock.close()
        ipfix.sock.close()
    for version, got in ((9, got9), (10, got10)):
        r = read(version, got)
        assert len(got) == 3, r.sets                   # options, data, options again
        ifaces = [x["interfaceName"] for x in r.by_template(512)]
        assert ifaces == ["lo", "eth0", "wan0", "lo", "eth0", "wan0", "wan1"]
        stats = r.by_template(514)
        # before anything was sent, then after the first two datagrams
        assert [(s["exportedMessageTotalCount"], s["exportedFlowRecordTotalCount"],
                 s["notSentFlowTotalCount"]) for s in stats] == [(0, 0, 1), (2, 2, 1)]
        assert stats[1]["exportedOctetTotalCount"] == len(got[0]) + len(got[1])


# -- read back by real collectors ------------------------------------------------

def flows_with_interfaces(version: int) -> list[bytes]:
    """The datagrams of one flow from interface 2 to 3: the options of LINKS
    first (their datagrams), then the flow's."""
    f = flow()._replace(in_if=2, out_if=3)
    return encode(encoder(version), [f])


@needs_tshark
@pytest.mark.parametrize("version", [9, 10])
def test_tshark_reads_the_options(tmp_path, version):
    pcap = tmp_path / "options.pcap"
    write_pcap(pcap, _case_first(version, LINKS), dport=2055)
    assert tshark_problems(pcap, 2055) == ""
    fields = ["cflow.if_name", "cflow.if_descr", "cflow.sampling_interval",
              "cflow.sampling_algorithm", "cflow.sampling_packet_interval",
              "cflow.sampling_packet_space", "cflow.flowsexp", "cflow.packetsexp",
              "cflow.octetsexp", "cflow.notsent_flows"]
    rows = tshark_fields(pcap, 2055, fields)
    assert len(rows) == 1
    assert rows[0] == {"cflow.if_name": "lo;eth0;wan0",
                       "cflow.if_descr": "lo;uplink to ISP;wan0",
                       "cflow.sampling_interval": "1", "cflow.sampling_algorithm": "1",
                       "cflow.sampling_packet_interval": "1",
                       "cflow.sampling_packet_space": "0", "cflow.flowsexp": "40",
                       "cflow.packetsexp": "5", "cflow.octetsexp": "1000",
                       "cflow.notsent_flows": "3"}


@pytest.mark.skipif(shutil.which("ipfixDump") is None, reason="needs ipfixDump (libfixbuf)")
def test_ipfixdump_reads_the_options(tmp_path):
    enc = encoder(10, template_refresh_packets=2)
    out = encode(enc, [flow(i) for i in range(40)])
    f = tmp_path / "out.ipfix"
    f.write_bytes(b"".join(out))
    res = subprocess.run(["ipfixDump", "--in", str(f)], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    text = res.stdout + res.stderr
    assert "warn" not in text.lower() and "error" not in text.lower(), text
    n_opts = len(read(10, out).records)
    assert f"{len(out)} Messages, {40 + n_opts} Data Records" in text
    flat = " ".join(text.split())
    for line in ("(S) ingressInterface : 2", "interfaceName : (len: 4) eth0",
                 "interfaceDescription : (len: 64) uplink to ISP", "samplingInterval : 1",
                 "samplingPacketSpace : 0", "(S) exportingProcessId : 7",
                 "exportedMessageTotalCount : 5", "exportedOctetTotalCount : 1000",
                 "exportedFlowRecordTotalCount : 40", "notSentFlowTotalCount : 3"):
        assert line in flat, line


@needs_nfcapd
@pytest.mark.parametrize("version", [9, 10])
def test_nfdump_names_the_interfaces_and_sees_no_sampling(tmp_path, version):
    out = nfcapd_files(tmp_path, flows_with_interfaces(version))
    files = [p for p in out.rglob("nfcapd.*") if "current" not in p.name]
    assert len(files) == 1
    rows = subprocess.run(["nfdump", "-q", "-N", "-r", str(files[0]), "-o",
                           "fmt:%sa|%in|%inam|%out|%onam|%pkt|%byt"],
                          capture_output=True, text=True, timeout=60)
    assert rows.returncode == 0, rows.stderr
    got = [[c.strip() for c in line.split("|")] for line in rows.stdout.splitlines()]
    # the description where there is one, else the name (interfaceDescription)
    assert got == [["198.51.100.7", "2", "uplink to ISP", "3", "wan0", "5", "500"]]
    exporters = subprocess.run(["nfdump", "-E", str(files[0])], capture_output=True,
                               text=True, timeout=60)
    assert exporters.returncode == 0, exporters.stderr
    assert "Sequence failures: 0" in exporters.stdout
    assert ("Sampler: Assigned Sampler: id: 0, algorithm: 1, packet interval: 1, "
            "packet space: 0") in exporters.stdout
    raw = subprocess.run(["nfdump", "-q", "-r", str(files[0]), "-o", "raw"],
                         capture_output=True, text=True, timeout=60)
    assert f"NETFLOW v{version}, Sampled" in raw.stdout


needs_nfacctd = pytest.mark.skipif(shutil.which("nfacctd") is None,
                                   reason="needs pmacct's nfacctd")


@needs_nfacctd
@pytest.mark.parametrize("version", [9, 10])
def test_nfacctd_reads_a_sampling_rate_of_one(tmp_path, version):
    port = free_udp_port()
    csv = tmp_path / "flows.csv"
    conf = tmp_path / "nfacctd.conf"
    conf.write_text(f"""daemonize: false
nfacctd_ip: 127.0.0.1
nfacctd_port: {port}
plugins: print
aggregate: src_host, dst_host, proto, in_iface, out_iface, sampling_rate
print_output: csv
print_output_file: {csv}
print_refresh_time: 1
nfacctd_time_new: true
pidfile: {tmp_path}/nfacctd.pid
logfile: {tmp_path}/nfacctd.log
""")
    # stops by itself at the latest after 60 s (timeout), else at our SIGINT
    proc = subprocess.Popen(["timeout", "-k", "5", "60", "nfacctd", "-f", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        lines: list[str] = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            end = time.monotonic() + 20
            while time.monotonic() < end and len(lines) < 2:
                # nfacctd binds at some point: the datagrams go again until a
                # flow comes out (its sampling rate is never left half-known:
                # options go first in each round)
                for d in flows_with_interfaces(version):
                    s.sendto(d, ("127.0.0.1", port))
                time.sleep(1.5)
                lines = csv.read_text().splitlines() if csv.exists() else []
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log = (tmp_path / "nfacctd.log").read_text() if (tmp_path / "nfacctd.log").exists() else ""
    assert len(lines) >= 2, log
    head = lines[0].split(",")
    row = dict(zip(head, lines[1].split(",")))
    assert (row["SRC_IP"], row["IN_IFACE"], row["OUT_IFACE"], row["SAMPLING_RATE"]) == (
        "198.51.100.7", "2", "3", "1"), lines


if __name__ == "__main__":
    print("EXPECTED = {")
    for name in sorted(CASES):
        print(f"    {name!r}: {run_case(name)!r},")
    print("}")
