"""The pcap meter: flow table semantics, and every sample capture metered and
checked against softflowd 1.1.0 (an independent meter) reading the same file.

softflowd runs as: ``softflowd -r FILE -n 127.0.0.1:PORT -v 9 -T vlan -t
maxlife=0 -c CTL`` exporting to its own ``nfcapd`` on loopback, read back
with ``nfdump``.  From a file, softflowd never expires on time (only when its
table is full and at shutdown), so its flows are one per direction and key
for the whole file; the meter is run with timeouts longer than any capture to
give the same.  Known, explained differences (checked, not ignored):

- bytes: softflowd counts the frame length minus the link header (pcap's
  ``len - skiplen``), so Ethernet padding of short frames (a 40-byte TCP ACK in
  a 60-byte frame) counts in its octets; nfflowd counts the IP length, as
  NetFlow does.  The test recomputes the padding per flow with tshark and
  checks softflowd's bytes == ours + padding.
"""

from __future__ import annotations

import collections
import glob
import io
import ipaddress
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from nfflowd.errors import NfflowdError
from nfflowd.app.meters import meter_file
from nfflowd.meter import FlowTable
from nfflowd.packet import Packet
from nfflowd.io.pcapfile import CaptureError
from nfflowd.record import (END_ACTIVE_TIMEOUT, END_FORCED, END_IDLE_TIMEOUT,
                            END_LACK_OF_RESOURCES, END_OF_FLOW, Flow)

ROOT = Path(__file__).resolve().parents[1]
PCAPS = ROOT / "tests" / "data" / "pcaps"
CAPTURES = sorted(glob.glob(str(PCAPS / "*.pcap")))
FOREVER = 10 ** 9          # seconds: longer than any capture spans


def collect(got: list):
    """A ``meter_file`` sink that keeps the records, as ``Flow`` tuples, in ``got``."""
    return lambda batch: got.extend(batch.flows())


S = 1_000_000_000
A = bytes([10, 0, 0, 1])
B = bytes([10, 0, 0, 2])


def pkt(src=A, dst=B, sport=1000, dport=80, proto=6, vlan=0, octets=100, tos=0, flags=0x10):
    return Packet(src, dst, sport, dport, proto, vlan, octets, tos, flags)


# --------------------------------------------------------------------------
# flow table semantics
# --------------------------------------------------------------------------

def test_counts_per_direction_and_flush():
    t = FlowTable()
    t.update(pkt(flags=0x02, octets=60), 1 * S)
    t.update(pkt(A, B, octets=40), 2 * S)
    t.update(pkt(B, A, 80, 1000, flags=0x12, octets=60), 1 * S + 5)
    assert t.expire(3 * S) == []
    out = sorted(t.flush_all(4 * S), key=lambda f: f.src)
    assert [(f.src, f.packets, f.octets, f.tcp_flags, f.end_reason) for f in out] == [
        (A, 2, 100, 0x12, END_FORCED), (B, 1, 60, 0x12, END_FORCED)]
    f = out[0]
    assert f.start_ms == 1000 and f.end_ms == 2000
    assert (f.post_src, f.post_dst, f.post_sport, f.post_dport) == (f.src, f.dst, f.sport, f.dport)
    assert f.direction == 0 and f.conn_id == 0 and f.family == 4
    # plain Flow records, untagged: vlan 0
    assert type(f) is Flow and len(f) == len(Flow._fields)
    assert f.translated is False and f.vlan == 0


@pytest.mark.parametrize("now", [5 * S, -5 * S, -(1 << 70), 1 << 70])
def test_records_as_columns_are_the_tuples(now):
    """expire_into / flush_into (blocks of columns, what meter_file sends)
    give the records and counts expire / flush_all give, IPv4 and IPv6,
    evicted and ended ones included; times no uint64 column holds (a pcapng's
    offset before 1970 or past 2^63 ns) stay Flow tuples the encoders refuse."""
    from nfflowd.record import FlowBatchBuilder
    six = ipaddress.IPv6Address("2001:db8::1").packed, ipaddress.IPv6Address("2001:db8::2").packed

    def feed(t):
        t.update(pkt(vlan=7, tos=0x10, flags=0x02), now)
        t.update(pkt(*six, proto=17, flags=0), now + 1)
        t.update(pkt(B, A, 80, 1000, flags=0x04), now + 2)       # RST: closing both
        t.update(pkt(A, B, 1001, 80), now + 3)                   # evicts one (max 3)
        t.update(pkt(*six, proto=17, flags=0), now + 40 * S)     # ends the first one
    a, b = FlowTable(max_flows=3), FlowTable(max_flows=3)
    feed(a)
    feed(b)
    want = a.expire(now + 3 * S) + a.flush_all()
    out = FlowBatchBuilder()
    b.expire_into(now + 3 * S, out)
    b.flush_into(out)
    got = out.batch().flows()
    assert sorted(got) == sorted(want) and len(got) == 5
    assert b.stats() == a.stats()


def test_inactive_timeout_and_next_deadline():
    t = FlowTable(active_timeout=300, inactive_timeout=30)
    assert t.next_deadline() is None
    t.update(pkt(), 0)
    assert t.next_deadline() == 30 * S
    t.update(pkt(), 10 * S)                      # moves the deadline (lazily)
    assert t.expire(30 * S) == []
    assert t.next_deadline() == 40 * S
    out = t.expire(40 * S)
    assert [(f.packets, f.end_reason) for f in out] == [(2, END_IDLE_TIMEOUT)]
    assert len(t) == 0 and t.next_deadline() is None


def test_active_timeout_splits_long_flow():
    t = FlowTable(active_timeout=60, inactive_timeout=30)
    for s in range(0, 100, 10):
        t.update(pkt(), s * S)
    out = t.expire(100 * S) + t.flush_all(100 * S)
    assert [(f.packets, f.end_reason) for f in out] == [(6, END_ACTIVE_TIMEOUT), (4, END_FORCED)]
    assert sum(f.packets for f in out) == 10


def test_deadline_passed_before_expire_is_called():
    # the caller never calls expire: the packet after the gap starts a new flow
    t = FlowTable(inactive_timeout=30)
    t.update(pkt(), 0)
    t.update(pkt(), 31 * S)
    assert t.next_deadline() == -1               # something to collect now
    out = t.expire(31 * S)
    assert [(f.packets, f.end_reason, f.end_ms) for f in out] == [(1, END_IDLE_TIMEOUT, 0)]
    assert [f.packets for f in t.flush_all()] == [1]


def test_tcp_fin_both_ways_ends_after_the_last_ack():
    t = FlowTable(inactive_timeout=30, tcp_fin_timeout=5)
    t.update(pkt(flags=0x11), 0)                          # FIN A->B
    assert t.next_deadline() == 30 * S                     # one FIN: not the end
    t.update(pkt(B, A, 80, 1000, flags=0x11), 1 * S)     # FIN B->A
    t.update(pkt(flags=0x10), 2 * S)                      # last ACK joins the flow
    assert t.next_deadline() == 6 * S
    out = t.expire(7 * S)
    assert sorted((f.src, f.packets, f.end_reason) for f in out) == [
        (A, 2, END_OF_FLOW), (B, 1, END_OF_FLOW)]


def test_tcp_rst_ends_both_directions():
    t = FlowTable(inactive_timeout=30, tcp_rst_timeout=2)
    t.update(pkt(B, A, 80, 1000), 0)
    t.update(pkt(flags=0x04), 1 * S)
    out = t.expire(3 * S)
    assert sorted((f.src, f.end_reason) for f in out) == [(A, END_OF_FLOW), (B, END_OF_FLOW)]


def test_fin_on_udp_port_numbers_means_nothing():
    t = FlowTable(inactive_timeout=30)
    t.update(pkt(proto=17, flags=0), 0)
    assert t.next_deadline() == 30 * S


def test_cache_pressure_evicts_oldest_and_counts():
    t = FlowTable(max_flows=2)
    t.update(pkt(sport=1), 0)
    t.update(pkt(sport=2), 1 * S)
    t.update(pkt(sport=1), 2 * S)      # sport=2 now has the earliest deadline
    t.update(pkt(sport=3), 3 * S)
    assert len(t) == 2 and t.evicted == 1
    out = t.expire(3 * S)
    assert [(f.sport, f.end_reason) for f in out] == [(2, END_LACK_OF_RESOURCES)]
    assert t.stats()["end_reasons"] == {END_LACK_OF_RESOURCES: 1}


def test_vlan_is_part_of_the_key():
    t = FlowTable()
    t.update(pkt(vlan=10), 0)
    t.update(pkt(vlan=20 | 30 << 12), 0)
    t.update(pkt(vlan=20 | 31 << 12), 0)
    out = sorted(t.flush_all(), key=lambda f: f.vlan)
    # QinQ: the inner (customer) tag keeps flows apart, Flow.vlan is the outer tag
    assert [f.vlan for f in out] == [10, 20, 20]
    assert all(type(f) is Flow for f in out)


# --------------------------------------------------------------------------
# meter_file on the sample captures
# --------------------------------------------------------------------------

def meter(path, **kw):
    t = FlowTable(active_timeout=FOREVER, inactive_timeout=FOREVER, **kw)
    return meter_file(path, t)


def test_arp_gives_no_flow_and_says_why():
    s = meter(PCAPS / "arp.pcap")
    assert s.ok and s.flows == [] and s.ip_packets == 0
    assert s.skipped == {"arp": s.frames} and s.frames == 45
    assert any("arp=45" in w for w in s.warnings())


def test_vlan_ids_in_metered_flows():
    s = meter(PCAPS / "vlan.pcap")
    got = collections.Counter((f.vlan, ipaddress.ip_address(f.src).compressed, f.sport, f.packets)
                              for f in s.flows)
    assert got == collections.Counter({
        (123, "192.168.170.8", 32795, 1): 1, (123, "192.168.170.20", 53, 1): 1,
        (150, "192.168.170.8", 32795, 1): 1, (150, "192.168.170.20", 53, 1): 1,
        (0, "192.168.170.8", 32795, 1): 1, (0, "192.168.170.20", 53, 1): 1})


def test_sink_receives_every_flow():
    got = []
    t = FlowTable(active_timeout=FOREVER, inactive_timeout=FOREVER)
    s = meter_file(PCAPS / "http.pcap", t, sink=collect(got))
    assert s.flows == [] and len(got) == s.flows_exported == 17
    assert sum(f.packets for f in got) == 46


def test_file_object_and_bytes_give_the_same_flows():
    path = PCAPS / "smtp.pcap"
    a = meter(path).flows
    b = meter(io.BytesIO(path.read_bytes())).flows
    c = meter(path.read_bytes()).flows
    assert sorted(a) == sorted(b) == sorted(c) and a


@pytest.mark.parametrize("cut", [24 + 8, 24 + 16 + 20])
def test_truncated_file_keeps_the_flows_metered_so_far(cut):
    data = (PCAPS / "http.pcap").read_bytes()
    whole = meter(data)
    # cut within the 2nd packet's record header / packet data
    first_len = struct.unpack_from("<I", data, 24 + 8)[0]
    at = 24 + 16 + first_len + (cut - 24)
    s = meter(data[:at])
    assert isinstance(s.error, CaptureError) and isinstance(s.error, NfflowdError)
    assert "truncated" in str(s.error)
    assert s.frames == 1 and s.ip_packets == 1
    assert len(s.flows) == 1 and s.flows[0].end_reason == END_FORCED
    assert s.warnings()[0].startswith("capture error: truncated pcap file")
    # cut near the end: all but the last packet
    s = meter(data[:-10])
    assert s.frames == whole.frames - 1 and sum(f.packets for f in s.flows) == 45


def test_bad_magic_is_a_clear_error():
    data = bytearray((PCAPS / "dns.pcap").read_bytes())
    data[0:4] = b"\xde\xad\xbe\xef"
    s = meter(bytes(data))
    assert s.flows == [] and s.frames == 0
    assert "bad magic number 0xdeadbeef" in str(s.error)


def test_corrupt_record_header_after_some_packets():
    data = bytearray((PCAPS / "dns.pcap").read_bytes())
    first_len = struct.unpack_from("<I", data, 24 + 8)[0]
    struct.pack_into("<I", data, 24 + 16 + first_len + 8, 0x7FFFFFFF)   # 2nd caplen
    s = meter(bytes(data))
    assert s.frames == 1 and len(s.flows) == 1
    assert "corrupt pcap record header" in str(s.error)


def test_missing_file_is_a_capture_error():
    s = meter("/nonexistent/x.pcap")
    assert "cannot open capture" in str(s.error) and s.flows == []


# --------------------------------------------------------------------------
# against softflowd 1.1.0
# --------------------------------------------------------------------------

NEEDS = [shutil.which(x) for x in ("softflowd", "softflowctl", "nfcapd", "nfdump", "tshark")]
needs_tools = pytest.mark.skipif(not all(NEEDS),
                                 reason="softflowd, softflowctl, nfcapd, nfdump, tshark needed")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, seconds: float, step: float = 0.05) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def run_softflowd(capture: str, workdir: Path, frames: int) -> tuple[collections.Counter, str]:
    """softflowd -> nfcapd -> nfdump; returns the flows as a multiset of
    (src, dst, sport, dport, proto, vlan, packets, bytes) and softflowd's
    statistics output."""
    nfdir = workdir / "nf"
    nfdir.mkdir()
    port = _free_udp_port()
    ctl = workdir / "ctl"
    # `timeout` makes both stop by themselves whatever happens to the test
    nfcapd = subprocess.Popen(["timeout", "60", "nfcapd", "-w", str(nfdir), "-p", str(port),
                               "-b", "127.0.0.1", "-t", "3600"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert _wait(lambda: any(nfdir.iterdir()), 10), "nfcapd did not start"
        sf = subprocess.Popen(["timeout", "60", "softflowd", "-r", capture,
                               "-n", f"127.0.0.1:{port}", "-v", "9", "-T", "vlan",
                               "-t", "maxlife=0", "-c", str(ctl), "-p", str(workdir / "pid"), "-d"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # softflowd 1.1.0 may read a file one chunk per wake-up: poke its
            # control socket until it has seen every frame, then shut it down
            # (which exports every flow).  Small files it reads and exits.
            def seen_all():
                if sf.poll() is not None:
                    return True
                if not ctl.exists():
                    return False
                r = subprocess.run(["softflowctl", "-c", str(ctl), "statistics"],
                                   capture_output=True, text=True, timeout=5)
                m = re.search(r"Packets processed: (\d+)", r.stdout)
                n = re.search(r"Ignored packets: \d+ \((\d+) non-IP", r.stdout)
                return bool(m and n) and int(m.group(1)) + int(n.group(1)) >= frames
            assert _wait(seen_all, 30), "softflowd did not read the whole file"
            if sf.poll() is None:
                subprocess.run(["softflowctl", "-c", str(ctl), "shutdown"],
                               capture_output=True, timeout=5)
            out, _ = sf.communicate(timeout=20)
        finally:
            if sf.poll() is None:
                sf.kill()
                sf.wait()
        m = re.search(r"Flows exported: \d+ \((\d+) records\)", out)
        records = int(m.group(1)) if m else None
        time.sleep(0.3)          # let nfcapd take the last datagram off the socket
    finally:
        nfcapd.send_signal(signal.SIGTERM)     # writes and closes its file
        try:
            nfcapd.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            nfcapd.kill()
            nfcapd.communicate()
    files = [p for p in nfdir.iterdir() if p.name.startswith("nfcapd.2")]
    got = collections.Counter()
    for f in files:
        r = subprocess.run(["nfdump", "-r", str(f), "-q", "-6", "-N", "-o",
                            "fmt:%sa|%da|%sp|%dp|%pr|%svln|%pkt|%byt"],
                           capture_output=True, text=True, timeout=30)
        for line in r.stdout.splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != 8:
                continue
            sa, da, sp, dp, pr, vl, pk, by = parts
            got[(ipaddress.ip_address(sa).compressed, ipaddress.ip_address(da).compressed,
                 _port(sp), _port(dp), _proto(pr), int(vl), int(pk), int(by))] += 1
    if records is not None:
        assert sum(got.values()) == records, "nfcapd lost datagrams"
    return got, out


def _port(s: str) -> int:
    if "." in s:                  # nfdump shows ICMP as type.code
        t, c = s.split(".")
        return int(t) * 256 + int(c)
    return int(s)


def _proto(s: str) -> int:
    return int(s) if s.isdigit() else socket.getprotobyname(s.lower())


def ours(flows) -> collections.Counter:
    return collections.Counter(
        (ipaddress.ip_address(f.src).compressed, ipaddress.ip_address(f.dst).compressed,
         f.sport, f.dport, f.proto, f.vlan, f.packets, f.octets) for f in flows)


LINK_HEADER = {"eth": 14, "sll": 16}


def link_padding(capture: str) -> collections.Counter:
    """Per flow key, the bytes softflowd counts beyond the IP length: frame
    length - link header (Ethernet 14, SLL 16, + 4 per VLAN tag) - IP length, from
    tshark (an independent dissector)."""
    r = subprocess.run(["tshark", "-r", capture, "-T", "fields", "-E", "separator=|",
                        "-e", "frame.len", "-e", "vlan.id", "-e", "ip.src", "-e", "ip.dst",
                        "-e", "ipv6.src", "-e", "ipv6.dst", "-e", "ip.len", "-e", "ipv6.plen",
                        "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "udp.srcport",
                        "-e", "udp.dstport", "-e", "ip.proto", "-e", "ipv6.nxt", "-e", "frame.protocols"],
                       capture_output=True, text=True, timeout=60)
    pad = collections.Counter()
    for line in r.stdout.splitlines():
        f = [x.split(",")[0] for x in line.split("|")]
        flen, vlan, s4, d4, s6, d6, iplen, plen, tsp, tdp, usp, udp, p4, p6, protos = f
        if not (s4 or s6):
            continue
        l3 = int(iplen) if s4 else int(plen) + 40
        hdr = LINK_HEADER[protos.split(":")[0]] + 4 * len([v for v in line.split("|")[1].split(",") if v])
        key = (ipaddress.ip_address(s4 or s6).compressed,
               ipaddress.ip_address(d4 or d6).compressed, int(tsp or usp or 0), int(tdp or udp or 0),
               int(p4 or p6), int(vlan or 0))
        pad[key] += int(flen) - hdr - l3
    return pad


@needs_tools
@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: os.path.basename(p))
def test_same_flows_as_softflowd(capture, tmp_path):
    s = meter(capture)
    assert s.ok, s.error
    mine = ours(s.flows)
    theirs, stats = run_softflowd(capture, tmp_path, s.frames)
    # softflowd's statistics agree on what is IP
    assert f"Packets processed: {s.ip_packets}" in stats
    non_ip = sum(s.skipped.values())
    assert f"({non_ip} non-IP, 0 too short)" in stats
    if os.path.basename(capture) == "arp.pcap":
        assert mine == theirs == collections.Counter()
        assert s.skipped == {"arp": 45}
        return
    # packets: identical multisets of (key, packets)
    def strip(c):
        return collections.Counter(k[:7] for k in c.elements())
    assert strip(mine) == strip(theirs)
    # bytes: identical, except Ethernet padding that softflowd counts
    pad = link_padding(capture)
    explained = collections.Counter()
    for k in mine.elements():
        explained[k[:7] + (k[7] + pad.get(k[:6], 0),)] += 1
    assert explained == theirs
    if sum(pad.values()):
        # the difference is real for this capture and fully explained
        assert mine != theirs


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: os.path.basename(p))
def test_inline_fast_path_equals_parser_path(capture):
    """meter_frames' inline Ethernet/IPv4 parsing == PacketParser + update."""
    from nfflowd.packet import PacketParser
    from nfflowd.io.pcapfile import CaptureReader
    frames = [p for b in CaptureReader(capture).batches() for p in b]
    a, b = FlowTable(inactive_timeout=5), FlowTable(inactive_timeout=5)
    pa, pb = PacketParser(), PacketParser()
    a.meter_frames(frames, pa)
    b.update_batch([pb.parse(lt, d, o) for _t, lt, d, o in frames], [f[0] for f in frames])
    end = frames[-1][0]
    assert sorted(a.expire(end) + a.flush_all()) == sorted(b.expire(end) + b.flush_all())
    assert (a.packets, a.octets, pa.skipped) == (b.packets, b.octets, pb.skipped)


# --------------------------------------------------------------------------
# forged IP lengths (#15 item 12)
# --------------------------------------------------------------------------

def forged_capture(path, n=10, claim=65000) -> bytes:
    """n 60-byte Ethernet/IPv4/UDP frames (46 bytes of IP on the wire) whose
    IP header claims ``claim`` bytes, one second apart, one flow."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(n):
        l4 = struct.pack("!HHHH", 40000, 53, 26, 0) + b"x" * 18
        l3 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, claim, i, 0, 64, 17, 0,
                         bytes([198, 51, 100, 1]), bytes([203, 0, 113, 1])) + l4
        frame = b"\0\0\0\0\0\2\0\0\0\0\0\1\x08\x00" + l3
        assert len(frame) == 60
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, 60, 60) + frame)
    data = b"".join(out)
    Path(path).write_bytes(data)
    return data


def test_forged_ip_length_counts_what_the_frame_held(tmp_path):
    """Ten 60-byte frames claiming 65000-byte packets are 460 bytes (60 - 14
    each, what softflowd counts), not 650000; each is counted in
    length_mismatch and the summary says so.  The numpy chunk path, the
    per-packet path (a chunk that falls back to it), and the batch path
    with a filter agree."""
    from nfflowd.io.bpf import Filter
    path = tmp_path / "forged.pcap"
    forged_capture(path)
    s = meter(path)
    assert [(f.packets, f.octets) for f in s.flows] == [(10, 460)]
    assert (s.ip_packets, s.octets, s.length_mismatch) == (10, 460, 10)
    assert any("10 packets whose IP header claims more bytes than the frame carried" in w
               for w in s.warnings())
    # max_flows 1 sends the chunk through FlowTable.meter_frames (two flows could not fit)
    forged_capture(path, claim=1000)
    with open(path, "ab") as f:
        f.write(forged_capture(tmp_path / "other.pcap", 3, claim=46)[24:].replace(
            bytes([203, 0, 113, 1]), bytes([203, 0, 113, 2])))
    for kw in ({}, {"max_flows": 1}):
        s = meter(path, **kw)
        assert (s.ip_packets, s.octets, s.length_mismatch) == (13, 13 * 46, 10), kw
    got = []
    st = meter_file(path, FlowTable(active_timeout=FOREVER, inactive_timeout=FOREVER),
                    collect(got), bpf=Filter("udp"))
    assert (st.ip_packets, st.octets, st.length_mismatch) == (13, 13 * 46, 10)
    assert sum(f.octets for f in got) == 13 * 46


@needs_tools
def test_forged_ip_length_as_softflowd_counts_it(tmp_path):
    path = tmp_path / "forged.pcap"
    forged_capture(path)
    s = meter(path)
    theirs, _stats = run_softflowd(str(path), tmp_path, s.frames)
    assert ours(s.flows) == theirs
    assert [k[7] for k in theirs] == [460]
