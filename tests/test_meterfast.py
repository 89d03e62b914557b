"""The vectorised pcap path (nfflowd.meterfast, pcapfile.walk_records) against
the per-packet path it replaces: ``meter_file`` as it was, batch by batch
through ``FlowTable.meter_frames`` and ``expire`` (``per_packet`` below).

Both run on every sample capture and on captures generated here with
hypothesis: Ethernet with and without 802.1Q/QinQ tags, Linux cooked, IPv4
with options and fragments, IPv6 with extension headers and fragments, TCP
with FIN and RST in both directions, UDP, ICMP, snaplen-cut frames, IP length
0 and IP lengths above the frame's (forged), time gaps around the idle, active, FIN and RST timeouts, time going
backwards, small tables (eviction) and small batches (expire boundaries).
Every record (all fields, end reasons included) and every counter must be
the same."""

from __future__ import annotations

import glob
import ipaddress
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfflowd.io import pcapfile
from nfflowd.app.meters import meter_file
from nfflowd.meter import FlowTable
from nfflowd.packet import PacketParser
from nfflowd.record import FlowBatchBuilder
from nfflowd.io.pcapfile import CaptureError, CaptureReader

PCAPS = Path(__file__).resolve().parent / "data" / "pcaps"
CAPTURES = sorted(glob.glob(str(PCAPS / "*.pcap")))
S = 1_000_000_000


def collect(got: list):
    """A ``meter_file`` sink that keeps the records, as ``Flow`` tuples, in ``got``."""
    return lambda batch: got.extend(batch.flows())


def per_packet(source, table, batch_size=4096):
    """meter_file before the vectorised path: (records, summary-like tuple)."""
    reader = CaptureReader(source, batch_size=batch_size)
    parser = PacketParser()
    out = []
    frames = 0
    first = last = None
    err = None
    try:
        for batch in reader.batches():
            frames += len(batch)
            if first is None:
                first = batch[0][0]
            table.meter_frames(batch, parser)
            last = batch[-1][0]
            out += table.expire(last)
    except CaptureError as e:
        err = str(e)
    out += table.flush_all(last if last is not None else 0)
    return out, (frames, table.packets, table.octets, dict(parser.skipped), parser.fragments,
                 parser.truncated, parser.length_mismatch, reader.snapped,
                 table.flows_exported, table.evicted,
                 dict(table.end_reasons), first, last, err)


def vectorised(source, table, batch_size=4096, chunk_size=1 << 25):
    got = []
    s = meter_file(source, table, sink=collect(got), batch_size=batch_size, chunk_size=chunk_size)
    return got, (s.frames, s.ip_packets, s.octets, s.skipped, s.fragments, s.truncated,
                 s.length_mismatch, s.snapped, s.flows_exported, s.evicted, s.end_reasons,
                 s.first_ns, s.last_ns, str(s.error) if s.error else None)


def same(source, batch_size=4096, chunk_size=1 << 25, **kw):
    a, sa = per_packet(source, FlowTable(**kw), batch_size)
    b, sb = vectorised(source, FlowTable(**kw), batch_size, chunk_size)
    assert sorted(a) == sorted(b)
    assert sa == sb
    return b


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: Path(p).name)
@pytest.mark.parametrize("kw", [{}, {"inactive_timeout": 1, "active_timeout": 3},
                                {"max_flows": 3, "inactive_timeout": 2},
                                {"batch_size": 5, "chunk_size": 1 << 16,
                                 "inactive_timeout": 0.5, "tcp_fin_timeout": 0.2},
                                {"max_flows": 3, "inactive_timeout": 2, "in_if": 4242}])
def test_sample_captures(capture, kw):
    kw = dict(kw)
    flows = same(capture, kw.pop("batch_size", 4096), kw.pop("chunk_size", 1 << 25), **kw)
    if "arp" not in capture:
        assert flows
    # every record: the table's ingress interface (0 unless given), egress 0
    assert {(f.in_if, f.out_if) for f in flows} <= {(kw.get("in_if", 0), 0)}


# --------------------------------------------------------------------------
# generated captures
# --------------------------------------------------------------------------

HOSTS4 = [bytes([198, 51, 100, i]) for i in (1, 2, 3)] + [bytes([203, 0, 113, 9])]
HOSTS6 = [ipaddress.IPv6Address(f"2001:db8::{i}").packed for i in (1, 2, 3)]
MAC = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02"


def l4(proto, sp, dp, flags):
    if proto == 6:
        return struct.pack("!HHIIBBHHH", sp, dp, 1, 2, 5 << 4, flags, 1024, 0, 0)
    if proto == 17:
        return struct.pack("!HHHH", sp, dp, 12, 0) + b"abcd"
    return struct.pack("!BBH", 8, 0, 0) + b"ping"


def frame(p) -> tuple[bytes, int]:
    """(frame bytes, link type) of one generated packet description."""
    (fam, si, di, proto, sp, dp, flags, link, tags, opts, frag, ext, tos, pad, odd_len) = p
    # odd_len: 1 the IP length is 0 (TSO), 2 it claims 1000 bytes more than the frame
    zero_len = odd_len == 1
    more = 1000 if odd_len == 2 else 0
    body = l4(proto, sp, dp, flags) + b"\0" * pad
    if fam == 4:
        src, dst = HOSTS4[si], HOSTS4[di]
        o = b"\x01\x01\x01\x00" if opts else b""
        ihl = 5 + len(o) // 4
        fr = {0: 0x4000, 1: 0x2000, 2: 0x2000 | 3, 3: 5}[frag]     # DF, first, middle, last
        total = 0 if zero_len else 4 * ihl + len(body) + more
        if frag in (2, 3):
            body = body[8:]
            total = 0 if zero_len else 4 * ihl + len(body) + more
        l3 = struct.pack("!BBHHHBB2x4s4s", 0x40 | ihl, tos, total, 77, fr, 64, proto,
                         src, dst) + o + body
        et = 0x0800
    else:
        src, dst = HOSTS6[si % 3], HOSTS6[di % 3]
        if proto == 1:
            proto = 58
        nh = proto
        hdrs = b""
        if ext & 1:                                     # destination options
            hdrs = struct.pack("!BB6x", nh, 0) + hdrs
            nh = 60
        if ext & 2 or frag:                             # fragment header
            off = {0: 0, 1: 1, 2: (1 << 3) | 1, 3: 2 << 3}[frag]
            hdrs = struct.pack("!BBHI", nh, 0, off, 99) + hdrs
            nh = 44
        if ext & 4:                                     # hop-by-hop first
            hdrs = struct.pack("!BB6x", nh, 0) + hdrs
            nh = 0
        if frag in (2, 3):
            body = body[8:]
        pl = hdrs + body
        l3 = struct.pack("!IHBB16s16s", (6 << 28) | (tos << 20), 0 if zero_len else len(pl) + more,
                         nh, 64, src, dst) + pl
        et = 0x86DD
    if link == 1:
        out = MAC
        for tpid, vid in tags:
            out += struct.pack("!HH", tpid, vid)
        return out + struct.pack("!H", et) + l3, 1
    if link == 113:
        return struct.pack("!HHH8sH", 0, 1, 6, b"\0" * 8, et) + l3, 113
    return (b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\0" * 28), 1     # ARP-ish, non-IP


packets = st.tuples(
    st.sampled_from([4, 4, 4, 6]),
    st.integers(0, 3), st.integers(0, 3),
    st.sampled_from([6, 6, 6, 17, 17, 1]),
    st.sampled_from([1000, 1001]), st.sampled_from([80, 443]),
    st.sampled_from([0x10, 0x18, 0x02, 0x12, 0x11, 0x11, 0x04, 0x14, 0x01]),
    st.sampled_from([1, 1, 1, 1, 113, 0]),
    st.sampled_from([(), (), ((0x8100, 10),), ((0x8100, 20),), ((0x88A8, 5), (0x8100, 6))]),
    st.sampled_from([False, False, False, True]),
    st.sampled_from([0, 0, 0, 0, 1, 2, 3]),
    st.sampled_from([0, 0, 1, 2, 4, 5]),
    st.sampled_from([0, 0, 0x10]),
    st.sampled_from([0, 0, 30, 1400]),
    st.sampled_from([0] * 14 + [1, 2]),
)
# time steps in ms: same instant, small, around the timeouts (1 s RST, 2 s FIN,
# 4 s idle, 10 s active), backwards
steps = st.sampled_from([0, 0, 1, 5, 50, 50, 100, 300, 300, 300] * 3
                        + [900, 999, 1000, 1001, 1999, 2000, 2001, 3999, 4000, 4001, 6000,
                           10000, 10001])
records = st.lists(st.tuples(packets, steps, st.sampled_from([0, 0, 0, 0, 40, 60])),
                   min_size=1, max_size=120)


def capture(recs, nano=False, bo="<", back=None) -> bytes:
    lts = {frame(p)[1] for p, _dt, _cut in recs}
    lt = 113 if lts == {113} else 1
    out = struct.pack(bo + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 65535, lt)
    t = 1_700_000_000_000            # ms
    for i, (p, dt, cut) in enumerate(recs):
        t += -1 if i == back else dt
        f, flt = frame(p)
        if flt != lt:
            f = b"\0" * 20            # an odd frame for this link type: skipped or parsed as junk
        wire = len(f)
        if cut:
            f = f[:cut]
        sec, ms = divmod(t, 1000)
        frac = ms * 1_000_000 if nano else ms * 1000
        out += struct.pack(bo + "IIII", sec, frac, len(f), wire) + f
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(recs=records, batch=st.sampled_from([1, 2, 3, 7, 4096]),
       chunk=st.sampled_from([64, 200, 1 << 25]),
       max_flows=st.sampled_from([1, 2, 3, 5, 131072]),
       nano=st.booleans(), bo=st.sampled_from(["<", ">"]),
       back=st.sampled_from([None, None, None, 0, 1, 5, 30]))
def test_generated_captures(recs, batch, chunk, max_flows, nano, bo, back):
    data = capture(recs, nano, bo, back)
    same(data, batch, chunk, active_timeout=10, inactive_timeout=4, tcp_fin_timeout=2,
         tcp_rst_timeout=1, max_flows=max_flows)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(recs=records, cut=st.integers(1, 200), junk=st.binary(min_size=4, max_size=16))
def test_generated_truncated_and_corrupt(recs, cut, junk):
    data = capture(recs)
    same(data[:max(24, len(data) - cut)], 3, 128)
    bad = bytearray(data)
    at = 24 + 16 * min(2, len(recs)) + min(cut, len(data) - 24)
    bad[at:at + len(junk)] = junk
    same(bytes(bad[:len(data)]), 3, 128)


# --------------------------------------------------------------------------
# the record walk
# --------------------------------------------------------------------------

@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=3000),
       snap=st.sampled_from([128, 300, 65535]), seed=st.integers(0, 2 ** 32 - 1),
       tail=st.integers(0, 40))
def test_lockstep_walk_equals_the_chain(sizes, snap, seed, tail):
    rng = np.random.default_rng(seed)
    out = bytearray(b"\0" * 24)
    for i, n in enumerate(sizes):
        n = min(n, snap)
        body = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        out += struct.pack("<IIII", 1_700_000_000 + i // 100, i % 1000, n, n + 4) + body
    buf = bytes(out) + bytes(rng.integers(0, 256, tail, dtype=np.uint8))
    want = pcapfile.walk_chain(buf, 24, "<")
    got = pcapfile.walk_lockstep(buf, 24, "<", snap, False, seg_min=256, seg_windows=2)
    if got is not None:              # None: a guess not proven, the chain is used
        assert got.tolist() == want.tolist()


def test_lockstep_walk_is_used_on_a_large_buffer():
    out = bytearray(b"\0" * 24)
    for i in range(20000):
        n = 40 + (i * 7919) % 90
        out += struct.pack("<IIII", 1_700_000_000, i % 1000, n, n) + bytes([i % 251]) * n
    buf = bytes(out)
    got = pcapfile.walk_lockstep(buf, 24, "<", 128, False)
    assert got is not None
    assert got.tolist() == pcapfile.walk_chain(buf, 24, "<").tolist()
    offs, stop, bad = pcapfile.walk_records(buf, 24, np.dtype("<u4"), 128, False)
    assert len(offs) == 20000 and stop == len(buf) and not bad


# one TCP conversation (and a second one on other ports), both directions,
# FIN and RST anywhere: the FIN/RST pair logic with flows that span chunks
conv = st.tuples(st.sampled_from([0, 1]), st.sampled_from([0, 0, 0, 1]),
                 st.sampled_from([0x10, 0x10, 0x18, 0x02, 0x12, 0x11, 0x11, 0x04, 0x14, 0x01]),
                 st.sampled_from([4, 4, 4, 6]), st.sampled_from([(), (), ((0x8100, 7),)]))
conv_steps = st.sampled_from([0, 1, 10, 100, 300, 500, 700, 999, 1000, 1001, 1500, 1999, 2000,
                              2001, 2500, 3999, 4000, 4001, 5000, 9000])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(conv=st.lists(st.tuples(conv, conv_steps), min_size=1, max_size=80),
       batch=st.sampled_from([1, 3, 16, 4096]), chunk=st.sampled_from([100, 300, 1000, 1 << 25]),
       fin=st.sampled_from([0.5, 1, 2, 4]), rst=st.sampled_from([0.5, 1, 2, 4]))
def test_generated_tcp_conversations(conv, batch, chunk, fin, rst):
    recs = []
    for (d, which, flags, fam, tags), dt in conv:
        sp, dp = (1000 + which, 80) if d == 0 else (80, 1000 + which)
        p = (fam, d, 1 - d, 6, sp, dp, flags, 1, tags, False, 0, 0, 0, 0, 0)
        recs.append((p, dt, 0))
    same(capture(recs), batch, chunk, active_timeout=10, inactive_timeout=4,
         tcp_fin_timeout=fin, tcp_rst_timeout=rst)


def chunked(data, table, chunks, slack=True):
    """meter_file's loop over a capture's chunks with the ChunkMeter
    ``chunks``: (records, how many chunks it refused)."""
    out = FlowBatchBuilder()
    got = []
    refused = 0
    for ch in CaptureReader(data).record_chunks(1 << 20):
        if not slack:
            ch.buf = ch.room = bytes(ch.buf)
        if not chunks.meter(ch, out):               # batch by batch, as meter_file does
            refused += 1
            for batch, boundary in chunks.batches(ch):
                table.meter_frames(batch, chunks.parser)
                if boundary:
                    got += table.expire(batch[-1][0])
    if chunks.frames % 4096 and chunks.last_ts is not None:
        got += table.expire(chunks.last_ts)
    return out.batch().flows() + got + table.flush_all(), refused


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(recs=records)
def test_chunks_without_slack_after_the_buffer(recs):
    """A RecordChunk whose buffer ends with its last record (no bytes to
    read past it) gives the same flows: the header reads are clipped."""
    from nfflowd.meterfast import ChunkMeter
    data = capture(recs)
    want, _ = per_packet(data, FlowTable(inactive_timeout=4, active_timeout=10), 4096)
    table = FlowTable(inactive_timeout=4, active_timeout=10)
    got, _refused = chunked(data, table, ChunkMeter(table, PacketParser(), 4096), slack=False)
    assert sorted(got) == sorted(want)


@pytest.mark.parametrize("kw", [{}, {"inactive_timeout": 0.05, "tcp_fin_timeout": 0.02,
                                     "active_timeout": 1}])
def test_bench_generator_capture(tmp_path, kw):
    """The benchmark's kind of capture (TCP connections with FIN both ways,
    DNS-like UDP), big enough for the lockstep record walk and several
    chunks: same flows as the per-packet path."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "bench_meter", Path(__file__).resolve().parents[1] / "bench" / "bench_meter.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "gen.pcap"
    bench.generate(path, 40000, 4000, full=False)
    data = path.read_bytes()
    assert pcapfile.walk_lockstep(data[:1 << 20], 24, "<", 128, False) is not None
    same(path, 4096, 1 << 20, **kw)


def test_hash_collision_falls_back_to_the_per_packet_path():
    """Flow keys are grouped by a hash; two keys with one hash send the chunk
    through the per-packet path (here every key has hash 0); with the real
    hash the chunk is vectorised."""
    from nfflowd.meterfast import ChunkMeter
    data = (PCAPS / "http.pcap").read_bytes()
    want, _ = per_packet(data, FlowTable(inactive_timeout=1))
    table = FlowTable(inactive_timeout=1)
    got, refused = chunked(data, table, ChunkMeter(table, PacketParser(), 4096, key_hash=(0, 0)))
    assert refused == 1 and sorted(got) == sorted(want)
    assert len({(f.src, f.sport) for f in got}) > 1
    table = FlowTable(inactive_timeout=1)
    got, refused = chunked(data, table, ChunkMeter(table, PacketParser(), 4096))
    assert refused == 0 and sorted(got) == sorted(want)


def test_pcapng_goes_batch_by_batch():
    """pcapng files are not chunked: meter_file gives what it gave before."""
    def block(btype, body):
        body += b"\0" * (-len(body) % 4)
        return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    out += block(1, struct.pack("<HHI", 1, 0, 0) + struct.pack("<HHB3x", 9, 1, 9) + b"\0" * 4)
    frames = [f for b in CaptureReader(PCAPS / "tls.pcap").batches() for f in b]
    for ts, _lt, data, orig in frames:
        out += block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), orig) + data)
    flows = same(out, 7, inactive_timeout=1)
    assert flows and sorted(flows) == sorted(same(PCAPS / "tls.pcap", 7, inactive_timeout=1))


def test_ipv6_chunks_are_vectorised(monkeypatch):
    """IPv6 TCP and UDP flows without extension headers (tagged or not)
    take the vectorised path, as IPv4 ones do: no packet is replayed one by
    one, the chunk is not refused, and the flows are the per-packet path's."""
    from nfflowd.meterfast import ChunkMeter
    recs = []
    for i in range(600):
        si, di = i % 3, (i + 1) % 3
        proto = (6, 17)[i % 2]
        tags = ((0x8100, 10),) if i % 5 == 0 else ()
        p = (6, si, di, proto, 1000 + i % 2, 80, 0x18, 1, tags, False, 0, 0, 0x10 * (i % 2),
             0, 0)
        recs.append((p, 3, 0))
    data = capture(recs)
    kw = {"inactive_timeout": 4, "active_timeout": 10}
    want, _ = per_packet(data, FlowTable(**kw))

    def no_replay(*a):
        raise AssertionError("replayed")
    monkeypatch.setattr(ChunkMeter, "_replay", no_replay)
    table = FlowTable(**kw)
    got, refused = chunked(data, table, ChunkMeter(table, PacketParser(), 4096))
    assert refused == 0 and sorted(got) == sorted(want)
    assert {len(f.src) for f in got} == {16} and len({f.vlan for f in got}) == 2


# flows without FIN/RST (a few have one, in an earlier chunk) with gaps around
# the idle (4 s) and active (10 s) timeouts, over chunks of a few packets: the
# stretches between gaps, continuing an entry, after an ended one, or new
plain = st.tuples(st.sampled_from([0, 0, 1]), st.sampled_from([6, 6, 17]),
                  st.sampled_from([0x10] * 12 + [0x18] * 6 + [0x11, 0x04]),
                  st.sampled_from([4, 4, 4, 6]), st.sampled_from([(), (), (), ((0x8100, 7),)]))
plain_steps = st.sampled_from([0, 1, 100, 500, 999, 1000, 1001, 2000, 2000, 3000, 3000, 3999,
                               4000, 4001, 4500, 6000, 9999, 10000, 12000])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(flows=st.lists(st.tuples(plain, plain_steps), min_size=1, max_size=80),
       batch=st.sampled_from([1, 3, 16, 4096]), chunk=st.sampled_from([100, 300, 1000, 1 << 25]),
       fin=st.sampled_from([1, 4, 8]))
def test_generated_flows_with_gaps(flows, batch, chunk, fin):
    recs = []
    for (which, proto, flags, fam, tags), dt in flows:
        f = flags if proto == 6 else 0
        p = (fam, which % 2, 2, proto, 1000 + which, 80, f, 1, tags, False, 0, 0, 0, 0, 0)
        recs.append((p, dt, 0))
    same(capture(recs), batch, chunk, active_timeout=10, inactive_timeout=4,
         tcp_fin_timeout=fin, tcp_rst_timeout=1)


@pytest.mark.parametrize("steps", [
    (1000, 5000, 1000, 5000),                 # stretches of two packets
    (3000, 3000, 3000, 3000, 5000, 1000),     # a stretch as long as the active timeout
    (5000, 3000, 3000, 3000, 3000, 5000),     # ... after a gap
    (1000, 1000, 4000, 1000, 4001, 1000)])    # gaps of exactly the idle timeout
@pytest.mark.parametrize("chunk", [200, 300, 1 << 25])
def test_idle_gaps_cut_a_flow_into_stretches(steps, chunk):
    """One UDP flow whose gaps end it (inactive 4 s, active 10 s): a record
    per stretch, as the per-packet path cuts it, whether its first stretch
    continues an entry of an earlier chunk or not; a stretch reaching the
    active timeout is replayed."""
    p = (4, 0, 2, 17, 1000, 80, 0, 1, (), False, 0, 0, 0, 0, 0)
    recs = [(p, 0, 0)] + [(p, d, 0) for d in steps]
    flows = same(capture(recs), 4096, chunk, active_timeout=10, inactive_timeout=4)
    assert len(flows) >= 3
