"""NetFlow v5 encoder: byte-exact output, splitting, and read-back by two
independent decoders (the PyPI ``netflow`` package and tshark's cflow)."""

import ipaddress
import shutil
import struct
import subprocess

import pytest

from nfflowd import flowtools
from nfflowd.flowtools import R_SRCPORT
from nfflowd.netflow5 import V5Encoder, record_count
from nfflowd.record import ORIGINAL, REPLY, Flow, FlowBatch

from test_flowtools import EX_BOOT_MS, EX_NOW_NS, example_flows, flow, ip


def test_byte_exact_header_and_record():
    start, end = EX_BOOT_MS + 136315, EX_BOOT_MS + 279737
    f = Flow(4, 6, ip("10.0.195.106"), ip("74.125.6.225"), 62380, 80,
             ip("10.0.195.106"), ip("74.125.6.225"), 62380, 80,
             720, 38052, start, end, ORIGINAL, tos=0x10, tcp_flags=0x1b)
    recs = flowtools.expand(FlowBatch.from_flows([f]), EX_NOW_NS, EX_BOOT_MS, "172.16.1.1")
    enc = V5Encoder(engine_type=1, engine_id=2)
    (d,) = enc.encode(recs)
    expected = bytes.fromhex(
        # header: version 5, count 1, sys_uptime 279737, unix_secs 1248952480,
        # unix_nsecs 737235000, flow_sequence 0, engine_type 1, engine_id 2, sampling 0
        "0005" "0001" "000444b9" "4a7180a0" "2bf15038" "00000000" "01" "02" "0000"
        # record: 10.0.195.106 -> 74.125.6.225, nexthop 0.0.0.0, input 0, output 0
        "0a00c36a" "4a7d06e1" "00000000" "0000" "0000"
        # dPkts 720, dOctets 38052, First 136315, Last 279737
        "000002d0" "000094a4" "0002147b" "000444b9"
        # srcport 62380, dstport 80, pad1, tcp_flags 0x1b, prot 6, tos 0x10
        "f3ac" "0050" "00" "1b" "06" "10"
        # src_as, dst_as, src_mask, dst_mask, pad2
        "0000" "0000" "00" "00" "0000")
    assert len(expected) == 24 + 48
    assert d == expected
    assert record_count(d) == 1
    # The next datagram's flow_sequence counts the record sent.
    (d2,) = enc.encode(recs)
    assert d2[16:20] == b"\x00\x00\x00\x01"


def many_records(n, now_ns=10**18, boot=10**12):
    flows = [flow(f"10.0.{i // 256}.{i % 256}", "192.0.2.1", 1024 + i, 80, packets=i + 1,
                  octets=100 * (i + 1), start_ms=boot + i, end_ms=boot + 2 * i,
                  in_if=i % 3 + 1, out_if=1000 * i)
             for i in range(n)]
    return flowtools.expand(FlowBatch.from_flows(flows), now_ns, boot)


def header(d):
    return struct.unpack("!HHIIIIBBH", d[:24])


@pytest.mark.parametrize("n,sizes", [(0, []), (1, [1]), (30, [30]), (31, [30, 1]),
                                     (65, [30, 30, 5]), (90, [30, 30, 30])])
def test_split_and_sequence(n, sizes):
    enc = V5Encoder()
    enc.sequence = 7    # as if 7 records had been sent already
    ds = enc.encode(many_records(n))
    assert [header(d)[1] for d in ds] == sizes
    assert [len(d) for d in ds] == [24 + 48 * s for s in sizes]
    expected_seq, acc = [], 7
    for s in sizes:
        expected_seq.append(acc)
        acc += s
    assert [header(d)[5] for d in ds] == expected_seq
    assert enc.sequence == 7 + n
    # records come out in order
    ports = [struct.unpack_from("!H", d, 24 + 48 * k + 32)[0] for d in ds
             for k in range(header(d)[1])]
    assert ports == [1024 + i for i in range(n)]


def test_sequence_wraps():
    enc = V5Encoder()
    enc.sequence = 2**32 - 10
    ds = enc.encode(many_records(30))
    assert header(ds[0])[5] == 2**32 - 10
    assert enc.sequence == 20


def test_batches_with_different_times_get_their_own_headers():
    a = many_records(10, now_ns=10**18)
    b = many_records(10, now_ns=10**18 + 1_000_000_000)
    enc = V5Encoder()
    ds = enc.encode(a) + enc.encode(b)      # a datagram holds one batch
    assert [header(d)[1] for d in ds] == [10, 10]
    assert header(ds[0])[3] + 1 == header(ds[1])[3]
    assert header(ds[0])[2] + 1000 == header(ds[1])[2]


def test_ipv6_skipped_and_counted():
    flows = [flow("2001:db8::1", "2001:db8::2", 1, 2),
             flow("10.0.0.1", "10.0.0.2", 3, 4, post_src="192.0.2.1"),
             flow("2001:db8::2", "2001:db8::1", 2, 1, direction=REPLY)]
    recs = flowtools.expand(FlowBatch.from_flows(flows), 10**18, 10**12)
    assert len(recs) == 4
    enc = V5Encoder()
    (d,) = enc.encode(recs)
    assert header(d)[1] == 2
    assert enc.skipped_ipv6 == 2
    only6 = enc.encode(recs.replace([recs.records[0], recs.records[3]]))
    assert only6 == [] and enc.skipped_ipv6 == 4 and enc.sequence == 2


def test_bad_record_counted_not_raised():
    recs = many_records(3)
    r = recs.records
    bad = r[1][:R_SRCPORT] + (70000,) + r[1][R_SRCPORT + 1:]     # srcport does not fit u16
    enc = V5Encoder()
    (d,) = enc.encode(recs.replace([r[0], bad, r[2]]))
    assert header(d)[1] == 2 and enc.invalid == 1 and enc.sequence == 2


def test_engine_range_checked():
    with pytest.raises(ValueError):
        V5Encoder(engine_type=256)


# -- independent decoders ---------------------------------------------------

def example_and_more():
    """The example triplet, a DNAT triplet (with interfaces), ICMP and a
    clamped counter (the host's own: no ingress, an index past 16 bits)."""
    flows = example_flows() + [
        flow("198.51.100.7", "203.0.113.9", 50000, 80, post_dst="10.0.0.80", post_dport=8080,
             packets=5, octets=500, start_ms=EX_BOOT_MS + 1000, end_ms=EX_BOOT_MS + 2000,
             tos=0x28, tcp_flags=0x1b, in_if=7, out_if=65535),
        flow("10.0.0.80", "198.51.100.7", 8080, 50000, post_src="203.0.113.9", post_sport=80,
             packets=4, octets=4000, start_ms=EX_BOOT_MS + 1000, end_ms=EX_BOOT_MS + 2000,
             direction=REPLY, tcp_flags=0x12, in_if=65535, out_if=7),
        flow("10.0.0.5", "198.51.100.7", 0, 8 * 256 + 0, proto=1, post_src="203.0.113.9",
             packets=2**33, octets=2**40, start_ms=EX_BOOT_MS + 5, end_ms=EX_BOOT_MS + 6,
             out_if=70000),
    ]
    return flowtools.expand(FlowBatch.from_flows(flows), EX_NOW_NS, EX_BOOT_MS, "172.16.1.1")


def example_and_more_and_40():
    """example_and_more() then 40 more records of the same time, one batch."""
    a = example_and_more()
    b = many_records(40, now_ns=EX_NOW_NS, boot=EX_BOOT_MS)
    assert (a.unix_secs, a.unix_nsecs, a.sys_uptime) == (b.unix_secs, b.unix_nsecs,
                                                         b.sys_uptime)
    return a.replace(a.records + b.records)


def expected_rows(recs):
    return [(ipaddress.ip_address(r[8]).compressed, ipaddress.ip_address(r[9]).compressed,
             r[13], r[14], r[15], r[4], r[5], r[6], r[7], r[16], r[17], r[11], r[12])
            for r in recs]


def test_read_back_with_pypi_netflow():
    netflow = pytest.importorskip("netflow")
    recs = example_and_more_and_40()
    enc = V5Encoder(engine_type=3, engine_id=9)
    ds = enc.encode(recs)
    assert len(ds) == 2
    rows, seqs = [], []
    for d in ds:
        p = netflow.parse_packet(d)
        h = p.header
        assert (h.version, h.uptime, h.timestamp, h.timestamp_nano) == (5, 279737, 1248952480,
                                                                        737235000)
        assert (h.engine_type, h.engine_id, h.sampling_interval) == (3, 9, 0)
        assert h.count == len(p.flows)
        seqs.append(h.sequence)
        for fl in p.flows:
            rows.append((str(ipaddress.IPv4Address(fl.IPV4_SRC_ADDR)),
                         str(ipaddress.IPv4Address(fl.IPV4_DST_ADDR)),
                         fl.SRC_PORT, fl.DST_PORT, fl.PROTO, fl.IN_PACKETS, fl.IN_OCTETS,
                         fl.FIRST_SWITCHED, fl.LAST_SWITCHED, fl.TOS, fl.TCP_FLAGS,
                         fl.INPUT, fl.OUTPUT))
            assert (fl.NEXT_HOP, fl.SRC_AS, fl.DST_AS) == (0, 0, 0)
    assert seqs == [0, 30]
    assert rows == expected_rows(recs)
    # spot checks against the spec rather than against the records
    assert rows[1][:4] == ("192.76.7.154", "74.125.6.225", 62380, 80)
    assert rows[4][:4] == ("198.51.100.7", "10.0.0.80", 50000, 8080)
    assert rows[6][3:7] == (2048, 1, 2**32 - 1, 2**32 - 1)
    assert [r[-2:] for r in rows[3:8]] == [(7, 65535), (7, 65535), (65535, 7), (0, 0), (0, 0)]
    assert rows[8][-2:] == (1, 0) and rows[9][-2:] == (2, 1000)


# A minimal pcap writer: Ethernet / IPv4 / UDP to port 2055.
def _csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def write_pcap(path, payloads, src="127.0.0.1", dst="127.0.0.1", dport=2055):
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, p in enumerate(payloads):
        udp = struct.pack("!HHHH", 40000, dport, 8 + len(p), 0) + p
        iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                          ip(src), ip(dst))
        iph = iph[:10] + struct.pack("!H", _csum(iph)) + iph[12:]
        frame = b"\x00\x00\x00\x00\x00\x02" + b"\x00\x00\x00\x00\x00\x01" + b"\x08\x00" + iph + udp
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)) + frame)
    with open(path, "wb") as f:
        f.write(b"".join(out))


TSHARK_FIELDS = ["cflow.version", "cflow.count", "cflow.sequence", "cflow.unix_secs",
                 "cflow.unix_nsecs", "cflow.engine_type", "cflow.engine_id",
                 "cflow.srcaddr", "cflow.dstaddr", "cflow.srcport", "cflow.dstport",
                 "cflow.protocol", "cflow.packets", "cflow.octets", "cflow.tos",
                 "cflow.tcpflags", "cflow.timestart", "cflow.timeend", "cflow.nexthop",
                 "cflow.inputint", "cflow.outputint"]


def test_read_back_with_tshark(tmp_path):
    if shutil.which("tshark") is None:
        print("tshark is not installed: skipping the cflow read-back")
        pytest.skip("tshark is not installed")
    recs = example_and_more_and_40()
    ds = V5Encoder(engine_type=3, engine_id=9).encode(recs)
    pcap = tmp_path / "v5.pcap"
    write_pcap(pcap, ds)
    cmd = ["tshark", "-r", str(pcap), "-d", "udp.port==2055,cflow", "-T", "fields",
           "-E", "separator=|", "-E", "aggregator=;"]
    for fld in TSHARK_FIELDS:
        cmd += ["-e", fld]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == len(ds)
    rows = []
    for line, d in zip(lines, ds):
        cols = dict(zip(TSHARK_FIELDS, line.split("|")))
        n = int(cols["cflow.count"])
        assert n == record_count(d)
        assert (cols["cflow.version"], cols["cflow.unix_secs"], cols["cflow.unix_nsecs"],
                cols["cflow.engine_type"], cols["cflow.engine_id"]) == \
            ("5", "1248952480", "737235000", "3", "9")
        per = {k: cols[k].split(";") for k in TSHARK_FIELDS[7:]}
        assert all(len(v) == n for v in per.values()), per
        for k in range(n):
            rows.append((per["cflow.srcaddr"][k], per["cflow.dstaddr"][k],
                         int(per["cflow.srcport"][k]), int(per["cflow.dstport"][k]),
                         int(per["cflow.protocol"][k]), int(per["cflow.packets"][k]),
                         int(per["cflow.octets"][k]),
                         # relative times in seconds, e.g. "136.315000000"
                         round(float(per["cflow.timestart"][k]) * 1000),
                         round(float(per["cflow.timeend"][k]) * 1000),
                         int(per["cflow.tos"][k], 0), int(per["cflow.tcpflags"][k], 0),
                         int(per["cflow.inputint"][k]), int(per["cflow.outputint"][k])))
            assert per["cflow.nexthop"][k] == "0.0.0.0"
    assert [int(line.split("|")[2]) for line in lines] == [0, 30]
    assert rows == expected_rows(recs)
    assert rows[0][:4] == ("10.0.195.106", "74.125.6.225", 62380, 80)
    assert rows[0][7:9] == (136315, 279737)
    assert [r[-2:] for r in rows[3:6]] == [(7, 65535), (7, 65535), (65535, 7)]


def test_encoders_share_a_batch_with_their_own_headers():
    recs = many_records(45)
    a, b = V5Encoder(engine_type=1, engine_id=2), V5Encoder(engine_type=3, engine_id=4)
    b.sequence = 1000
    da, db = a.encode(recs), b.encode(recs)
    assert [header(d)[5:8] for d in da] == [(0, 1, 2), (30, 1, 2)]
    assert [header(d)[5:8] for d in db] == [(1000, 3, 4), (1030, 3, 4)]
    assert [d[24:] for d in da] == [d[24:] for d in db]
    assert (a.records_encoded, b.records_encoded) == (45, 45)
    (d,) = a.encode(many_records(1))
    assert header(d)[5] == 45


def test_interfaces_byte_exact_and_counted():
    """INPUT and OUTPUT at offsets 12 and 14 of a record, both forms of a
    batch; an index past 16 bits goes as 0 and is counted."""
    flows = [flow("10.0.0.5", "198.51.100.7", 1, 2, in_if=0x0102, out_if=0x0304),
             flow("10.0.0.6", "198.51.100.7", 1, 2, in_if=0x10000, out_if=0xFFFF),
             flow("2001:db8::1", "2001:db8::2", 1, 2, in_if=2**20)]
    for batch in (FlowBatch.from_flows(flows), FlowBatch.from_flows(flows).as_columns()):
        enc = V5Encoder()
        (d,) = enc.encode(flowtools.expand(batch, 10**18, 10**12))
        assert d[24 + 8:24 + 16] == bytes.fromhex("00000000" "0102" "0304")
        assert d[72 + 8:72 + 16] == bytes.fromhex("00000000" "0000" "ffff")
        assert (enc.records_encoded, enc.interfaces_zeroed, enc.skipped_ipv6) == (2, 2, 1)


def test_bad_record_among_ipv6_and_many():
    recs = many_records(40)
    r = list(recs.records)
    six = flowtools.expand(FlowBatch.from_flows([flow("2001:db8::1", "2001:db8::2", 1, 2)]), 10**18, 10**12).records[0]
    r[5] = r[5][:R_SRCPORT] + (-1,) + r[5][R_SRCPORT + 1:]      # does not fit u16
    r.insert(3, six)
    enc = V5Encoder()
    ds = enc.encode(recs.replace(r))
    assert [header(d)[1] for d in ds] == [29, 10]
    assert [header(d)[5] for d in ds] == [0, 29]
    assert (enc.invalid, enc.skipped_ipv6, enc.sequence, enc.records_encoded) == (1, 1, 39, 39)
    ports = [struct.unpack_from("!H", d, 24 + 48 * k + 32)[0] for d in ds
             for k in range(header(d)[1])]
    assert ports == [1024 + i for i in range(40) if i != 5]
