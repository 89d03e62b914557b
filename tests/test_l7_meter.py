"""The meter's L7 inspection (``nfflowd.l7.inspect``, its numpy pre-filter
``nfflowd.l7.chunkfilter``, the wiring in ``app.meters``): both paths pick
the same frames in the same order, a split ClientHello is retried once,
the work and the state are bounded, every record gets its own direction's
fields, and ``nfflowd meter --l7 ... --print --format json`` on the sample
captures."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfflowd import cli
from nfflowd.app.config import loads as parse_config
from nfflowd.errors import ConfigError
from nfflowd.app.meters import meter_file
from nfflowd.io.pcapfile import CaptureReader
from nfflowd.l7.inspect import MAX_PACKETS, PROTOCOLS, Inspector, parse_protocols
from nfflowd.meter import FlowTable

ROOT = Path(__file__).resolve().parents[1]
PCAPS = ROOT / "tests" / "data" / "pcaps"
SAMPLES = sorted(PCAPS.glob("*.pcap"))

A4, B4 = bytes([198, 51, 100, 1]), bytes([203, 0, 113, 9])
A6 = bytes.fromhex("20010db8000000000000000000000001")
B6 = bytes.fromhex("20010db8000000000000000000000002")
MAC = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02"


class Recorder:
    """A parser seam that keeps what it was given: (kind, first packet's
    ms, payload); the fields it gives back say which payload that was.
    ``more``: a TLS record longer than the payload (as a parser would
    answer a ClientHello's first segment)."""

    def __init__(self, found=True):
        self.seen = []
        self.found = found

    def parse(self, kind, payload, state):
        self.seen.append((kind, state.ts_ms, bytes(payload)))
        more = (kind == "tls" and len(payload) >= 5
                and int.from_bytes(payload[3:5], "big") + 5 > len(payload))
        if more:
            return None, None, True
        if not self.found or payload.startswith(b"BAD"):
            return None, "recorder_no", False
        return {"http_path": payload[:12].hex(), "http_status": state.ts_ms}, None, False


def per_frame(source, protos=PROTOCOLS, **kw):
    rec = Recorder(**kw)
    insp = Inspector(protos, parsers=rec)
    for batch in CaptureReader(source).batches():
        insp.frames(batch)
    return rec, insp


def per_chunk(source, protos=PROTOCOLS, chunk_size=1 << 20, **kw):
    rec = Recorder(**kw)
    insp = Inspector(protos, parsers=rec)
    for item in CaptureReader(source).record_chunks(chunk_size):
        if type(item) is list:          # pcapng: no chunks
            insp.frames(item)
        else:
            insp.chunk(item)
    return rec, insp


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_both_paths_pick_the_same_frames_in_the_sample_captures(path):
    a, ia = per_frame(str(path))
    b, ib = per_chunk(str(path))
    assert a.seen == b.seen
    assert ia.stats() == ib.stats()


def test_the_sample_captures_have_something_to_inspect():
    """(the test above cannot pass by picking nothing)"""
    kinds = {}
    for path in SAMPLES:
        rec, _ = per_frame(str(path))
        for kind, _ts, _p in rec.seen:
            kinds[kind] = kinds.get(kind, 0) + 1
    assert {"tls", "quic", "http", "dns"} <= set(kinds)


# -- generated captures ------------------------------------------------------------
HELLO = (b"\x16\x03\x01" + struct.pack("!H", 300) + b"\x01" + b"h" * 300)
PAYLOADS = [b"", b"", HELLO, HELLO[:100], HELLO[100:], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\n", b"POS", b"\x16\x03", b"\x16",
            b"\xc3\x00\x00\x00\x01\x08abcdefgh" + b"\0" * 40,       # QUIC v1 long header
            b"\xc0\x6b\x33\x43\xcf" + b"\0" * 20, b"\xc0\xff\x00\x00\x1d" + b"\0" * 20,
            b"\xe3\x00\x04\xfa" + b"\0" * 44,                        # NTP: not QUIC
            b"\x12\x34\x01\x00\x00\x01" + b"\0" * 20, b"BAD payload", b"x" * 500]


def l4(proto, sp, dp, payload, doff=5):
    if proto == 6:
        return struct.pack("!HHIIBBHHH", sp, dp, 1, 2, doff << 4, 0x18, 1024, 0, 0) \
            + b"\0" * (4 * doff - 20) + payload
    if proto == 17:
        return struct.pack("!HHHH", sp, dp, 8 + len(payload), 0) + payload
    return b"\x08\0\0\0" + payload


def gen_frame(p) -> bytes:
    fam, proto, sp, dp, payload, link, tags, frag, doff, odd = p
    body = l4(proto, sp, dp, payload, doff)
    if fam == 4:
        total = {0: 20 + len(body), 1: 0, 2: 20 + len(body) + 300, 3: 10}[odd]
        fr = {0: 0x4000, 1: 0x2000, 2: 5}[frag]
        l3 = struct.pack("!BBHHHBB2x4s4s", 0x45, 0, total, 7, fr, 64, proto,
                         *((A4, B4) if sp < dp else (B4, A4))) + body
        et = 0x0800
    else:
        plen = {0: len(body), 1: 0, 2: len(body) + 300, 3: 4}[odd]
        nh = proto if not frag else 44
        if frag:
            body = struct.pack("!BBHI", proto, 0, 1, 9) + body
            plen += 8
        l3 = struct.pack("!IHBB16s16s", 6 << 28, plen, nh, 64,
                         *((A6, B6) if sp < dp else (B6, A6))) + body
        et = 0x86DD
    if link == "raw":
        return l3
    out = MAC
    for tpid, vid in tags:
        out += struct.pack("!HH", tpid, vid)
    return out + struct.pack("!H", et) + l3


frames = st.tuples(
    st.sampled_from([4, 4, 6]), st.sampled_from([6, 6, 17, 17, 1]),
    st.sampled_from([53, 443, 1000, 1001]), st.sampled_from([53, 80, 443, 1002]),
    st.sampled_from(PAYLOADS), st.sampled_from(["eth", "eth", "raw"]),
    st.sampled_from([(), (), ((0x8100, 10),), ((0x88A8, 5), (0x8100, 6))]),
    st.sampled_from([0, 0, 0, 1, 2]), st.sampled_from([5, 5, 5, 8, 15]),
    st.sampled_from([0, 0, 0, 1, 2, 3]))


def pcap(recs, link) -> bytes:
    lt = 101 if link == "raw" else 1
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, lt)
    t = 1_700_000_000_000
    for i, (p, cut) in enumerate(recs):
        t += 7
        f = gen_frame(p[:5] + (link,) + p[6:])
        wire = len(f)
        if cut:
            f = f[:cut]
        sec, ms = divmod(t, 1000)
        out += struct.pack("<IIII", sec, ms * 1000, len(f), wire) + f
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(recs=st.lists(st.tuples(frames, st.sampled_from([0, 0, 0, 30, 54, 60, 100])),
                     min_size=1, max_size=60),
       link=st.sampled_from(["eth", "raw"]), chunk=st.sampled_from([64, 300, 1 << 20]),
       protos=st.sampled_from([PROTOCOLS, ("tls",), ("dns", "quic"), ("http",)]))
def test_both_paths_pick_the_same_frames_in_generated_captures(recs, link, chunk, protos):
    data = pcap(recs, link)
    a, ia = per_frame(data, protos)
    b, ib = per_chunk(data, protos, chunk_size=chunk)
    assert a.seen == b.seen
    assert ia.stats() == ib.stats()


def tcp_frame(payload, sp=40000, dp=443, src=A4, dst=B4):
    return MAC + b"\x08\x00" + struct.pack("!BBHHHBB2x4s4s", 0x45, 0, 40 + len(payload), 7,
                                           0x4000, 64, 6, src, dst) + l4(6, sp, dp, payload)


def frames_pcap(frames_, step_ms=10) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    t = 1_700_000_000_000
    for f in frames_:
        t += step_ms
        sec, ms = divmod(t, 1000)
        out += struct.pack("<IIII", sec, ms * 1000, len(f), len(f)) + f
    return out


@pytest.mark.parametrize("chunk", [1 << 20, 200])
def test_a_client_hello_split_over_two_segments_is_retried_once_with_both(chunk):
    """The second segment starts with anything; another flow's packet
    comes between; with 200-byte chunks the segments are in two chunks."""
    first, second = HELLO[:120], HELLO[120:]
    other = tcp_frame(b"GET / HTTP/1.1\r\n\r\n", sp=40001, dp=80)
    data = frames_pcap([tcp_frame(first), other, tcp_frame(second),
                        tcp_frame(b"\x16\x03\x01\x00\x05hello")])
    for rec, _ in (per_frame(data), per_chunk(data, chunk_size=chunk)):
        tls = [p for kind, _t, p in rec.seen if kind == "tls"]
        assert tls == [first, HELLO]          # the whole ClientHello found: done
    # a retry that still falls short is not held again
    rec, insp = per_frame(frames_pcap([tcp_frame(first), tcp_frame(b"x" * 10),
                                       tcp_frame(b"y" * 10)]))
    assert [p for _k, _t, p in rec.seen] == [first, first + b"x" * 10]
    assert insp.bad == {"tls_beyond_two_segments": 1}


def test_each_direction_is_inspected_a_bounded_number_of_times():
    bad = tcp_frame(b"BAD" + b"\x16\x03")
    noisy = [tcp_frame(b"\x16\x03\x01\x00\x02ab") for _ in range(20)]
    rec, insp = per_frame(frames_pcap([bad] + noisy), found=False)
    assert len(rec.seen) == MAX_PACKETS
    assert insp.inspected == MAX_PACKETS and insp.bad == {"recorder_no": MAX_PACKETS}


def test_states_are_bounded_by_max_flows_and_dropped_with_their_records():
    hellos = [tcp_frame(b"\x16\x03\x01\x00\x02ab", sp=30000 + i) for i in range(50)]
    data = frames_pcap(hellos)
    table = FlowTable(max_flows=8)
    insp = Inspector(PROTOCOLS, max_flows=16, parsers=Recorder())     # as run_file sizes it
    held = []
    got = []

    def sink(batch):
        got.append(batch)
        held.append(len(insp))

    st_ = meter_file(data, table, sink, l7=insp, progress=lambda s: None, batch_size=4)
    assert max(held) <= 8 + 4 and len(insp) == 0        # the table's and a batch's
    assert st_.l7["states"] == 0
    # a table of 8 evicts a flow for each new one: its record takes its
    # state, so the inspector never fills up and every flow gets its fields
    assert insp.full == 0 and sum(len(b.l7) for b in got) == 50
    # an inspector smaller than the table: the flows beyond it are counted
    insp = Inspector(PROTOCOLS, max_flows=5, parsers=Recorder())
    st_ = meter_file(data, FlowTable(), None, l7=insp)
    assert insp.full == 45 and st_.l7["full"] == 45 and len(insp) == 0


def record_lines(data, chunk_path, **kw):
    from nfflowd.app.meters import json_lines
    insp = Inspector(PROTOCOLS, parsers=Recorder(**kw))
    out = []
    extra = {} if chunk_path else {"progress": lambda s: None}
    meter_file(data, FlowTable(), out.append, l7=insp, **extra)
    return sorted(line for b in out for line in json_lines(b)), insp


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_records_get_their_own_directions_fields_on_both_paths(path):
    a, ia = record_lines(str(path), True)
    b, ib = record_lines(str(path), False)
    assert a == b
    rec, _ = per_frame(str(path))
    with_fields = [json.loads(x) for x in a if '"http_path"' in x]
    assert len(with_fields) == ia.found == ia.attached
    # each record's fields come from a payload inside its own time span
    seen = {(ts, p[:12].hex()) for _k, ts, p in rec.seen}
    for r in with_fields:
        assert (r["http_status"], r["http_path"]) in seen
        assert r["start_ms"] <= r["http_status"] <= r["end_ms"]


def test_protocol_names():
    assert parse_protocols("all") == PROTOCOLS
    assert parse_protocols("dns, TLS") == ("tls", "dns")
    assert parse_protocols(["quic"]) == ("quic",)
    with pytest.raises(ValueError, match="'ftp'"):
        parse_protocols("tls,ftp")


def test_config_meter_l7(tmp_path):
    base = "export:\n  collectors: []\nsyslog:\n  enabled: false\n"
    assert parse_config(base + "meter:\n  l7: [dns, tls]\n").meter.l7 == ("tls", "dns")
    assert parse_config(base + "meter:\n  l7: all\n").meter.l7 == PROTOCOLS
    assert parse_config(base).meter.l7 == ()
    for bad, why in (("[tls, ftp]", "'ftp'"), ("3", "expected a list")):
        with pytest.raises(ConfigError, match=f"meter.l7.*{why}"):
            parse_config(base + f"meter:\n  l7: {bad}\n")


# -- with the parsers, against tshark --------------------------------------------------
def _missing():
    from nfflowd.l7.inspect import missing_parsers
    return missing_parsers(PROTOCOLS)


# the parsers each sample capture's fields need (QUIC's names come from the TLS parser)
NEEDS = {"tls": ("tls", "quic"), "http": ("http",), "dns": ("dns",),
         "quic_initial-sample": ("tls", "quic")}


def protocols_of(name: str) -> str:
    """The --l7 argument for the capture ``name``; skips (saying which)
    while one of its parsers is not in nfflowd.l7."""
    missing = [p for p in NEEDS[name] if p in _missing()]
    if missing:
        pytest.skip(f"no parser yet for {', '.join(missing)}")
    return ",".join(NEEDS[name])


needs_parsers = pytest.mark.skipif(bool(_missing()),
                                   reason=f"no parser yet for {', '.join(_missing())}")
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")

# -- the command -------------------------------------------------------------------
def meter_cli(capsys, *args, config=None):
    argv = (["-c", config] if config else []) + ["meter", *args]
    rc = cli.main(argv)
    out, errs = capsys.readouterr()
    return rc, out, errs


@pytest.fixture
def noexport(tmp_path):
    p = tmp_path / "nfflowd.yaml"
    p.write_text("export:\n  collectors: []\nsyslog:\n  enabled: false\n")
    return str(p)


@pytest.mark.parametrize("name", ["tls", "http", "dns", "quic_initial-sample"])
def test_l7_off_prints_what_it_printed_before(capsys, noexport, name):
    path = str(PCAPS / f"{name}.pcap")
    rc0, base, _ = meter_cli(capsys, "-r", path, "--print", config=noexport)
    rc1, off, _ = meter_cli(capsys, "-r", path, "--print", "--l7", "none", config=noexport)
    rc2, on, errs = meter_cli(capsys, "-r", path, "--print", "--l7", protocols_of(name),
                              config=noexport)
    assert rc0 == rc1 == rc2 == 0
    assert base == off == on and base.count("\n") > 0     # csv carries no L7 field
    assert "l7: " in errs


def test_json_output_is_one_object_per_record(capsys, noexport):
    path = str(PCAPS / "dns.pcap")
    rc, csv_out, _ = meter_cli(capsys, "-r", path, "--print", config=noexport)
    rc2, out, _ = meter_cli(capsys, "-r", path, "--print", "--format", "json",
                            config=noexport)
    assert rc == rc2 == 0
    rows = [json.loads(x) for x in out.splitlines()]
    assert len(rows) == len(csv_out.splitlines())
    assert {"src", "dst", "sport", "dport", "proto", "packets", "octets", "start",
            "end"} <= set(rows[0])
    assert all("dns_qname" not in r for r in rows)           # --l7 off
    assert {r["src"] for r in rows} >= {"192.168.0.30", "8.8.8.8"}
    assert rows[0]["start"].endswith("Z")


def test_bad_l7_argument(capsys, noexport):
    rc, _, errs = meter_cli(capsys, "-r", str(PCAPS / "dns.pcap"), "--l7", "tls,smtp",
                            config=noexport)
    assert rc == cli.EXIT_CONFIG and "--l7" in errs and "'smtp'" in errs


# field -> (tshark field, which packets: tcp, udp or both)
ORACLE = {
    "tls_ja3": "tls.handshake.ja3",
    "tls_alpn": "tls.handshake.extensions_alpn_str",
    "http_method": "http.request.method", "http_host": "http.host",
    "http_path": "http.request.uri", "http_user_agent": "http.user_agent",
    "http_status": "http.response.code",
    "dns_qname": "dns.qry.name", "dns_qtype": "dns.qry.type", "dns_rcode": "dns.flags.rcode",
    "dns_answers": "dns.count.answers",
    "quic_version": "quic.version", "quic_user_agent": "tls.quic.parameter.google.user_agent",
}
KEYS = ["ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "tcp.srcport", "udp.srcport",
        "tcp.dstport", "udp.dstport", "tls.handshake.type", "tls.handshake.version",
        "tls.handshake.extensions.supported_version", "dns.flags.response"]


def tshark_fields(path) -> dict:
    """(src, dst, sport, dport) -> {field: value} of the first packet of each
    direction where tshark reads it."""
    names = KEYS + sorted(set(ORACLE.values())) + ["tls.handshake.extensions_server_name"]
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=a", "-E", "aggregator=|"]
    for n in names:
        cmd += ["-e", n]
    rows = subprocess.run(cmd, capture_output=True, text=True, check=True,
                          timeout=60).stdout.splitlines()
    out: dict = {}
    for row in rows:
        v = dict(zip(names, row.split("\t")))
        key = (v["ip.src"] or v["ipv6.src"], v["ip.dst"] or v["ipv6.dst"],
               int(v["tcp.srcport"] or v["udp.srcport"] or 0),
               int(v["tcp.dstport"] or v["udp.dstport"] or 0))
        got = out.setdefault(key, {})
        udp = bool(v["udp.srcport"])
        for field, name in ORACLE.items():
            raw = v[name].split("|")[0]
            if not raw or field in got or (udp and field.startswith("tls_")):
                continue
            if field == "dns_rcode" and v["dns.flags.response"].split("|")[0] not in ("1", "True"):
                continue                # tshark's rcode of a query: the request's 0
            if field == "tls_alpn":
                raw = raw.split(",")[0]
            got[field] = (int(raw, 0) if field in ("http_status", "dns_qtype", "dns_rcode",
                                                    "dns_answers", "quic_version")
                          else raw)
        sni = v["tls.handshake.extensions_server_name"].split("|")[0]
        if sni:
            got.setdefault("quic_sni" if udp else "tls_sni", sni)
        hs = v["tls.handshake.type"].split("|")
        if not udp and ("1" in hs or "2" in hs) and "tls_version" not in got:
            sv = [int(x, 0) for x in v["tls.handshake.extensions.supported_version"].split("|")
                  if x]
            sv = [x for x in sv if (x & 0x0F0F) != 0x0A0A or x >> 8 != x & 0xFF]   # no GREASE
            got["tls_version"] = max(sv) if sv else int(v["tls.handshake.version"].split("|")[0], 0)
    return {k: f for k, f in out.items() if f}


@needs_tshark
@pytest.mark.parametrize("name", ["tls", "http", "dns", "quic_initial-sample"])
@pytest.mark.parametrize("chunk_path", [True, False])
def test_fields_equal_tsharks_reading(capsys, noexport, name, chunk_path):
    path = PCAPS / f"{name}.pcap"
    # -n takes meter_file batch by batch, the per-packet path
    count = [] if chunk_path else ["-n", "1000000"]
    rc, out, errs = meter_cli(capsys, "-r", str(path), "--l7", protocols_of(name), "--print",
                              "--format", "json", *count, config=noexport)
    assert rc == 0, errs
    records = {(r["src"], r["dst"], r["sport"], r["dport"]): r
               for r in map(json.loads, out.splitlines())}
    oracle = tshark_fields(path)
    assert oracle
    for key, fields in oracle.items():
        r = records[key]
        for field, value in fields.items():
            assert r.get(field) == value, (key, field)


def test_bad_payload_is_counted_and_never_breaks_a_run(capsys, noexport, tmp_path):
    protos = [p for p in PROTOCOLS if p not in _missing()]
    if not protos:
        pytest.skip("no parser in nfflowd.l7 yet")
    loop = (struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c"
            + struct.pack("!HH", 1, 1))             # a name pointing at itself
    body = b"\x01\x00\x00\xff" + b"\xff" * 43              # a length past the record's end
    hello = b"\x16\x03\x01" + struct.pack("!H", len(body)) + body
    frames_ = [MAC + b"\x08\x00" + struct.pack("!BBHHHBB2x4s4s", 0x45, 0, 28 + len(loop), 1,
                                               0, 64, 17, A4, B4) + l4(17, 40000, 53, loop),
               tcp_frame(hello), tcp_frame(b"GET \xff\xfe\r\n\r\n", sp=40002, dp=80),
               MAC + b"\x08\x00" + struct.pack("!BBHHHBB2x4s4s", 0x45, 0, 28 + 1200, 1, 0, 64,
                                               17, A4, B4)
               + l4(17, 40003, 443, b"\xc3\x00\x00\x00\x01\x08" + b"\xee" * 1194)]
    cap = tmp_path / "bad.pcap"
    cap.write_bytes(frames_pcap(frames_))
    rc, out, errs = meter_cli(capsys, "-r", str(cap), "--l7", ",".join(protos), "--print",
                              "--format", "json", config=noexport)
    assert rc == 0, errs
    assert len(out.splitlines()) == 4
    bad = re.search(r"bad payload: (.*)", errs)
    assert bad, errs
    counted = dict(x.split("=") for x in bad.group(1).split(", "))
    # a reason per hostile payload whose parser is there (HTTP's may read its line)
    assert set(protos) - {"http"} <= {k.split("_")[0] for k in counted}, counted


@pytest.mark.skipif(shutil.which("ipfixDump") is None, reason="needs ipfixDump (libfixbuf)")
@pytest.mark.parametrize("name", ["tls", "http", "dns", "quic_initial-sample"])
def test_ipfixdump_reads_the_l7_elements_of_a_meter_run(capsys, tmp_path, name):
    """The meter's IPFIX export to a UDP socket on 127.0.0.1: ipfixDump
    (libfixbuf) reads each record's enterprise elements with the values the
    JSON print shows."""
    protos = protocols_of(name)
    from nfflowd.ie import L7_ELEMENTS
    from test_l7_export import ELEMENTS_XML
    from test_meter_cli import UdpCollector
    col = UdpCollector()
    conf = tmp_path / "nfflowd.yaml"
    conf.write_text("export:\n  collectors:\n"
                    f"    - {{host: 127.0.0.1, port: {col.port}, version: 10}}\n"
                    "syslog:\n  enabled: false\n")
    try:
        rc, out, errs = meter_cli(capsys, "-r", str(PCAPS / f"{name}.pcap"), "--l7", protos,
                                  "--print", "--format", "json", config=str(conf))
        got = col.drain()
    finally:
        col.sock.close()
    assert rc == 0, errs
    path = tmp_path / "export.ipfix"
    path.write_bytes(b"".join(got))
    res = subprocess.run(["ipfixDump", "--in", str(path), "--element-file", str(ELEMENTS_XML),
                          "--hexdump=16"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    want = {}
    for r in map(json.loads, out.splitlines()):
        for field, v in r.items():
            el = L7_ELEMENTS.get(field)
            if el is None:
                continue
            head = f"({el.ie.enterprise}/{el.ie.id}) {el.name} : "
            if el.type == "string":
                line = f"{head}(len: {len(v.encode())}) {v}"
            elif el.type == "octetArray":
                line = f"{head}(len: {len(v) // 2}) 0x{v}"
            else:
                line = f"{head}{v}"
            want[line] = want.get(line, 0) + 1
    assert want                             # the capture has fields to export
    for line, n in want.items():
        assert text.count(line + " ") == n, line     # the space: 1 is not 12's prefix


@needs_tshark
@pytest.mark.parametrize("chunk_path", [True, False])
def test_quic_version_equals_tsharks_reading(capsys, noexport, chunk_path):
    """``--l7 quic`` alone (the QUIC parser needs no other): the Initial's
    version, as tshark reads it; the server name too once the TLS parser
    is there."""
    path = PCAPS / "quic_initial-sample.pcap"
    count = [] if chunk_path else ["-n", "1000000"]
    rc, out, errs = meter_cli(capsys, "-r", str(path), "--l7", "quic", "--print", "--format",
                              "json", *count, config=noexport)
    assert rc == 0, errs
    (r,) = map(json.loads, out.splitlines())
    (fields,) = tshark_fields(path).values()
    assert r["quic_version"] == fields["quic_version"] == 0xFF00001D
    if "tls" not in _missing():
        assert r["quic_sni"] == fields["quic_sni"]
    assert "l7: 1 payloads inspected, 1 flow directions with fields, 1 records given them" in errs
