"""BPF filters (nfflowd.io.bpf) on capture files, against tcpdump and tshark.

tcpdump reads the same filter syntax (through the same libpcap compiler, so it
checks our use of it: link types, lengths, the per-frame run); tshark's display
filters are an independent implementation, used where the two languages mean
the same thing.  ``meter -r FILE --bpf EXPR`` must give the flows that metering
tcpdump's filtered copy of FILE gives."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nfflowd import cli
from nfflowd.io.bpf import Filter, FilterError, compile_filter
from nfflowd.app.meters import meter_file
from nfflowd.meter import FlowTable
from nfflowd.io.pcapfile import CaptureReader

ROOT = Path(__file__).resolve().parents[1]
PCAPS = ROOT / "tests" / "data" / "pcaps"
CAPTURES = sorted(PCAPS.glob("*.pcap"))
needs_tcpdump = pytest.mark.skipif(shutil.which("tcpdump") is None,
                                   reason="needs tcpdump (Debian: tcpdump)")
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")


def collect(got: list):
    """A ``meter_file`` sink that keeps the records, as ``Flow`` tuples, in ``got``."""
    return lambda batch: got.extend(batch.flows())


EXPRESSIONS = ["udp", "tcp", "tcp port 80", "udp port 53", "not ip", "ip6",
               "greater 200", "tcp[tcpflags] & (tcp-syn|tcp-fin) != 0",
               "vlan and udp", "host 192.168.170.8", "net 10.0.0.0/8 or port 5060", "arp"]


def kept(path, expr) -> int | str:
    """Frames of ``path`` the filter keeps, or the error (a filter cannot be
    compiled for every link type: 'vlan' on Linux cooked capture)."""
    f = Filter(expr)
    try:
        return sum(len(f.keep(b)) for b in CaptureReader(path).batches())
    except FilterError:
        return "error"


def tcpdump_count(path, expr, check=True) -> int | str:
    r = subprocess.run(["tcpdump", "-nn", "-r", str(path), expr], capture_output=True,
                       text=True, timeout=60)
    if r.returncode != 0 and not check:
        return "error"
    assert r.returncode == 0, r.stderr
    return len(r.stdout.splitlines())


@needs_tcpdump
@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_the_filter_keeps_what_tcpdump_prints(expr):
    counts = {p.name: kept(p, expr) for p in CAPTURES}
    assert counts == {p.name: tcpdump_count(p, expr, check=False) for p in CAPTURES}
    assert any(isinstance(n, int) and n > 0 for n in counts.values())   # matches somewhere


@pytest.fixture(scope="module")
def tshark_inputs(tmp_path_factory):
    """The Ethernet captures concatenated into one file (one tshark run per
    filter), and the others as they are."""
    eth, other = [], []
    for p in CAPTURES:
        (eth if next(iter(CaptureReader(p)))[1] == 1 else other).append(p)
    merged = tmp_path_factory.mktemp("bpf") / "ethernet.pcap"
    r = subprocess.run(["mergecap", "-a", "-F", "pcap", "-w", str(merged), *map(str, eth)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [merged, *other]


def kept_numbers(path, expr) -> list[int] | str:
    """1-based numbers of the frames the filter keeps (tshark's frame.number)."""
    f = Filter(expr)
    frames = [fr for b in CaptureReader(path).batches() for fr in b]
    try:
        return [i + 1 for i, fr in enumerate(frames) if f.keep([fr])]
    except FilterError:
        return "error"


@needs_tshark
@pytest.mark.skipif(shutil.which("mergecap") is None, reason="needs mergecap (wireshark)")
@pytest.mark.parametrize("expr, display", [
    ("tcp port 80", "tcp.port == 80"),
    ("udp port 53", "udp.port == 53 and not icmp and not vlan"),
    ("ip6 and udp", "ipv6 and udp and not ip"),
    ("tcp[tcpflags] & tcp-syn != 0", "tcp.flags.syn == 1 and not icmp"),
    ("vlan 123", "vlan.id == 123"),
    ("host 192.168.170.8", "ip.addr == 192.168.170.8 and not vlan and not icmp"),
])
def test_the_filter_keeps_the_frames_tshark_display_filters_select(tshark_inputs, expr,
                                                                   display):
    """The same frames, one by one, as an independent filter implementation
    (Wireshark's display filters, written to mean what the BPF expression does)."""
    compared = 0
    for p in tshark_inputs:
        mine = kept_numbers(p, expr)
        if mine == "error":       # 'vlan' on Linux cooked capture: tcpdump refuses it too
            assert tcpdump_count(p, expr, check=False) == "error"
            assert next(iter(CaptureReader(p)))[1] != 1
            continue
        r = subprocess.run(["tshark", "-n", "-r", str(p), "-Y", display, "-T", "fields",
                            "-e", "frame.number"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert mine == [int(x) for x in r.stdout.split()], (p.name, expr)
        compared += len(mine)
    assert compared > 0


def test_bad_expressions_name_themselves():
    for expr, words in (("udp prot 53", "syntax error"), ("port 99999", "99999"),
                        ("vlan 5000", "4095"), ("host nfflowd-no-such-name.invalid", "")):
        with pytest.raises(FilterError) as e:
            compile_filter(expr)
        assert f"bad BPF filter {expr!r}" in str(e.value) and words in str(e.value)


def test_programs_are_classic_bpf_with_the_snaplen_as_accept_value():
    p = compile_filter("", 1, 256)
    assert p.instructions() == [(0x06, 0, 0, 256)]         # BPF_RET|BPF_K #256
    p = compile_filter("udp", 1, 1000)
    assert p.instructions()[-2:] == [(0x06, 0, 0, 1000), (0x06, 0, 0, 0)]
    assert "ret      #1000" in p.dump()
    fprog, _buf = p.sock_fprog()
    assert len(fprog) == 16 and int.from_bytes(fprog[:2], "little") == len(p)
    # raw IP (101) has no Ethernet header: the IPv4 protocol byte is at 9
    assert "ldb      [9]" in compile_filter("udp", 101).dump()


def test_a_filter_per_link_type_and_a_limit():
    f = Filter("udp")
    eth = bytes(12) + b"\x08\x00" + bytes.fromhex("4500001c00000000401100000a0000010a000002") \
        + bytes(8)
    raw = eth[14:]
    tcp = eth[:23] + b"\x06" + eth[24:]
    batch = [(1, 1, eth, len(eth)), (2, 101, raw, len(raw)), (3, 1, tcp, len(tcp)),
             (4, 1, eth, len(eth)), (5, 1, eth, len(eth))]
    assert [t for t, *_ in f.keep(batch)] == [1, 2, 4, 5] and f.rejected == 1
    assert [t for t, *_ in f.keep(batch, limit=2)] == [1, 2] and f.rejected == 1
    assert [t for t, *_ in f.keep(batch, limit=3)] == [1, 2, 4] and f.rejected == 2


def flows_of(summary_flows):
    return sorted((f.src, f.dst, f.sport, f.dport, f.proto, f.vlan, f.packets, f.octets,
                   f.start_ms, f.end_ms, f.tcp_flags, f.end_reason) for f in summary_flows)


@needs_tcpdump
@pytest.mark.parametrize("name, expr", [("http.pcap", "tcp port 80 and greater 100"),
                                        ("sip.pcap", "udp"), ("smtp.pcap", "not udp"),
                                        ("vlan.pcap", "vlan and src port 53"),
                                        ("tls.pcap", "tcp[tcpflags] & tcp-push != 0")])
def test_metering_with_a_filter_equals_metering_tcpdumps_filtered_copy(tmp_path, name, expr):
    src = PCAPS / name
    copy = tmp_path / "filtered.pcap"
    r = subprocess.run(["tcpdump", "-r", str(src), "-w", str(copy), expr], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    want = meter_file(str(copy), FlowTable())
    got = []
    stats = meter_file(str(src), FlowTable(), collect(got), bpf=Filter(expr))
    assert want.flows and flows_of(got) == flows_of(want.flows)
    assert stats.frames == want.frames == tcpdump_count(src, expr)
    assert stats.filtered == tcpdump_count(src, "") - stats.frames
    assert (stats.ip_packets, stats.octets) == (want.ip_packets, want.octets)


def test_count_limits_the_frames_metered():
    got = []
    stats = meter_file(str(PCAPS / "ntp.pcap"), FlowTable(), collect(got), count=7)
    assert stats.count_reached and stats.frames == 7
    assert sum(f.packets for f in got) == 7
    # with a filter: the first 3 frames that pass; frames after them are not counted
    got = []
    stats = meter_file(str(PCAPS / "sip.pcap"), FlowTable(), collect(got),
                       bpf=Filter("udp"), count=30)
    assert stats.frames == 30 and sum(f.packets for f in got) == 30
    frames = [fr for b in CaptureReader(str(PCAPS / "sip.pcap")).batches() for fr in b]
    udp = Filter("udp")
    thirtieth = [i for i, fr in enumerate(frames) if udp.keep([fr])][29]
    assert 0 < stats.filtered == thirtieth + 1 - 30


@needs_tcpdump
def test_meter_r_with_bpf_prints_the_filtered_flows(tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text("export:\n  collectors: []\nsyslog:\n  enabled: false\n")
    src = PCAPS / "http.pcap"
    copy = tmp_path / "filtered.pcap"
    subprocess.run(["tcpdump", "-r", str(src), "-w", str(copy), "src port 80"], check=True,
                   capture_output=True, timeout=60)
    assert cli.main(["-c", str(conf), "meter", "-r", str(copy), "--print"]) == 0
    want = capsys.readouterr().out.splitlines()
    assert cli.main(["-c", str(conf), "meter", "-r", str(src), "--print", "--bpf",
                     "src port 80"]) == 0
    got = capsys.readouterr()
    # columns 3 on: the flows' values (0-2 are the export time)
    assert want and sorted(line.split(",")[3:] for line in got.out.splitlines()) == \
        sorted(line.split(",")[3:] for line in want)
    n = tcpdump_count(src, "src port 80")
    assert f"filter 'src port 80': {46 - n} frames rejected, {n} passed" in got.err
    assert "\r" not in got.err                # no progress line when not a terminal
    # -n: the first frames only
    assert cli.main(["-c", str(conf), "meter", "-r", str(src), "-n", "5"]) == 0
    err = capsys.readouterr().err
    assert "5 frames, 5 IP packets" in err and "stopped after 5 frames (-n)" in err
