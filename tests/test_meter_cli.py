"""``nfflowd meter -r FILE [--print]``: a capture metered and exported to real
collectors on 127.0.0.1 (a UDP socket decoded with the PyPI netflow parser,
a real nfcapd read back by nfdump), the CSV printed, the summary, and a
truncated capture."""

from __future__ import annotations

import calendar
import collections
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from nfflowd import cli
from nfflowd.app.meters import meter_file
from nfflowd.meter import FlowTable
from nfflowd.options import TID_EXPORTER_STATS

from test_netflow9 import (free_udp_port, local_nfcapd, needs_nfcapd, nfdump_rows,
                          pypi_decode_v9)
from test_options import read as read_options
from test_packet import eth, ipv4, udp
from test_pcapfile import epb, idb, shb

ROOT = Path(__file__).resolve().parents[1]
PCAPS = ROOT / "tests" / "data" / "pcaps"


def config(tmp_path, port, version):
    p = tmp_path / "nfflowd.yaml"
    p.write_text("export:\n  collectors:\n"
                 f"    - {{host: 127.0.0.1, port: {port}, version: {version}}}\n"
                 "syslog:\n  enabled: false\n")
    return str(p)


class UdpCollector:
    """A UDP socket on 127.0.0.1 that keeps what it receives."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def drain(self, quiet=0.3):
        out = []
        self.sock.settimeout(quiet)
        while True:
            try:
                out.append(self.sock.recv(65535))
            except socket.timeout:
                return out

    def close(self):
        self.sock.close()


@pytest.fixture
def v9_socket():
    c = UdpCollector()
    yield c
    c.close()


def run(capsys, *argv):
    rc = cli.main(list(argv))
    got = capsys.readouterr()
    return rc, got.out, got.err


def key(src, dst, sport, dport, proto):
    return (str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), int(sport),
            int(dport), int(proto))


# --------------------------------------------------------------------------

def test_vlan_ids_appear_in_the_v9_records(tmp_path, capsys, monkeypatch, v9_socket):
    conf = config(tmp_path, v9_socket.port, 9)
    rc, out, err = run(capsys, "-c", conf, "meter", "-r", str(PCAPS / "vlan.pcap"), "--print")
    assert rc == 0, err
    datagrams = v9_socket.drain()
    _, recs = pypi_decode_v9(datagrams, monkeypatch)
    records = [r for rs in recs for r in rs]
    # 6 frames: a DNS query and answer, untagged, on VLAN 123 and on VLAN 150
    assert len(records) == 6
    got = collections.Counter(
        (r["vlanId"], str(r["sourceIPv4Address"]), r["sourceTransportPort"],
         r["packetDeltaCount"], r["octetDeltaCount"]) for r in records)
    assert got == collections.Counter({
        (vlan, "192.168.170.8", 32795, 1, 56): 1 for vlan in (0, 123, 150)} | {
        (vlan, "192.168.170.20", 53, 1, 284): 1 for vlan in (0, 123, 150)})
    # --print: the flow-tools CSV, one line per flow (v5 has no VLAN field)
    lines = out.splitlines()
    assert len(lines) == 6 and all(len(line.split(",")) == 18 for line in lines)
    assert collections.Counter(tuple(line.split(",")[8:10] + line.split(",")[13:16])
                               for line in lines) == {
        ("192.168.170.8", "192.168.170.20", "32795", "53", "17"): 3,
        ("192.168.170.20", "192.168.170.8", "53", "32795", "17"): 3}
    assert "6 IP packets" in err and "6 flows exported" in err and "packets/s" in err


def nf_flags(n: int) -> str:
    """TCP flags as nfdump 1.7 prints them (%flg)."""
    return "".join(c if n & bit else "." for c, bit in
                   zip("CEUAPRSF", (0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01)))


@needs_nfcapd
def test_http_to_v5_nfcapd_equals_the_printed_csv(tmp_path, capsys):
    port = free_udp_port()
    store = tmp_path / "nfcapd"
    store.mkdir()
    with local_nfcapd(store, port):
        rc, out, err = run(capsys, "-c", config(tmp_path, port, 5), "meter",
                           "-r", str(PCAPS / "http.pcap"), "--print")
    assert rc == 0, err
    fmt = "%ts %sa %da %sp %dp %pr %pkt %byt %flg %tos"
    rows = nfdump_rows(store, fmt, env=dict(os.environ, TZ="UTC"))
    lines = [line.split(",") for line in out.splitlines()]
    assert len(lines) == 17 and "17 flows exported" in err
    want = []
    for c in lines:
        (secs, nsecs, up, _ex, pkts, octs, first, _last, sa, da, _nh, _in, _out, sp, dp,
         pr, tos, flg) = c
        start_ms = int(secs) * 1000 + int(nsecs) // 1_000_000 - int(up) + int(first)
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start_ms // 1000)) + \
            f".{start_ms % 1000:03d}"
        want.append(ts.split() + [sa, da, sp, dp, pr, pkts, octs, nf_flags(int(flg)), tos])
    assert sorted(rows) == sorted(want)
    # the totals nfdump received are the capture's
    assert sum(int(r[7]) for r in rows) == 46 and "46 IP packets" in err
    # and the times are the capture's own, as tshark reads them: the capture
    # (2016) is older than this machine's boot, which v5's milliseconds since
    # boot cannot reach; the meter's headers count uptime in capture time
    if shutil.which("tshark"):
        t = subprocess.run(["tshark", "-r", str(PCAPS / "http.pcap"), "-T", "fields",
                            "-E", "separator=,", "-e", "frame.time_epoch", "-e", "ip.src",
                            "-e", "ip.dst", "-e", "tcp.srcport", "-e", "udp.srcport",
                            "-e", "tcp.dstport", "-e", "udp.dstport"],
                           capture_output=True, text=True, timeout=60)
        assert t.returncode == 0, t.stderr
        first_seen: dict = {}
        for line in t.stdout.splitlines():
            ts, sa, da, tsp, usp, tdp, udp_ = line.split(",")
            k = (sa, da, tsp or usp or "0", tdp or udp_ or "0")
            ms = int(ts.replace(".", "")[:-6])          # floor to milliseconds
            first_seen[k] = min(first_seen.get(k, ms), ms)
        nf_first: dict = {}
        for r in rows:
            k = (r[2], r[3], r[4], r[5])
            ms = calendar.timegm(time.strptime(r[0] + " " + r[1][:8],
                                               "%Y-%m-%d %H:%M:%S")) * 1000 + int(r[1][9:12])
            nf_first[k] = min(nf_first.get(k, ms), ms)
        assert nf_first == first_seen


def test_arp_prints_no_flow_and_says_why(tmp_path, capsys, v9_socket):
    rc, out, err = run(capsys, "-c", config(tmp_path, v9_socket.port, 9), "meter",
                       "-r", str(PCAPS / "arp.pcap"), "--print")
    assert rc == 0
    assert out == ""
    assert v9_socket.drain() == []
    assert "0 flows exported" in err
    assert "no IP packet in the capture" in err
    assert "45 frames skipped, not metered (arp=45)" in err


def test_truncated_capture_exports_what_was_metered_and_fails(tmp_path, capsys, monkeypatch,
                                                              v9_socket):
    data = (PCAPS / "http.pcap").read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[:len(data) * 2 // 3])
    expected = meter_file(str(cut), FlowTable())
    assert not expected.ok and expected.flows          # the cut leaves flows before it
    rc, out, err = run(capsys, "-c", config(tmp_path, v9_socket.port, 9), "meter",
                       "-r", str(cut), "--print")
    assert rc == 1
    assert f"error: {cut}: truncated pcap file" in err
    assert f"the {len(expected.flows)} flows metered before it were exported" in err
    _, recs = pypi_decode_v9(v9_socket.drain(), monkeypatch)
    records = [r for rs in recs for r in rs]
    got = sorted((key(r["sourceIPv4Address"], r["destinationIPv4Address"],
                      r["sourceTransportPort"], r["destinationTransportPort"],
                      r["protocolIdentifier"]), r["packetDeltaCount"], r["octetDeltaCount"])
                 for r in records)
    assert got == sorted((key(f.src, f.dst, f.sport, f.dport, f.proto), f.packets, f.octets)
                         for f in expected.flows)
    assert len(out.splitlines()) == len(expected.flows)
    assert f"{expected.ip_packets} IP packets" in err


def test_meter_arguments(tmp_path, capsys):
    conf = config(tmp_path, 9, 9)
    rc, _, err = run(capsys, "-c", conf, "meter", "-i", "nfflowd-no-such-if0")
    assert rc == 1 and "no such network interface: 'nfflowd-no-such-if0'" in err
    rc, _, err = run(capsys, "-c", conf, "meter", "-r", "x.pcap", "--bpf", "udp prot 53")
    assert rc == 2 and "bad BPF filter 'udp prot 53'" in err and "syntax error" in err
    rc, _, err = run(capsys, "-c", conf, "meter")
    assert rc == 2 and "-r FILE or -i IFACE is required" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["-c", conf, "meter", "-r", "x.pcap", "-i", "lo"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    rc, _, err = run(capsys, "-c", conf, "meter", "-r", "x.pcap", "--max-flows", "0")
    assert rc == 2 and "max_flows" in err
    rc, _, err = run(capsys, "-c", conf, "meter", "-r", "x.pcap", "-n", "-1")
    assert rc == 2 and "-n COUNT" in err
    rc, _, err = run(capsys, "-c", conf, "meter", "-i", "lo", "-s", "10")
    assert rc == 2 and "-s SNAPLEN" in err
    rc, _, err = run(capsys, "-c", str(tmp_path / "missing.yaml"), "meter", "-r", "x.pcap")
    assert rc == 2 and "bad configuration" in err
    # unknown arguments stay an error for the other commands
    with pytest.raises(SystemExit) as e:
        cli.main(["version", "-r", "x"])
    assert e.value.code == 2
    assert cli.main(["version"]) == 0
    # the help says what meter does
    assert cli.main(["help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "meter { -r FILE | -i IFACE }" in out and "meter (meter a capture file or a live interface" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["meter", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for words in ("--print", "--bpf EXPR", "-n COUNT", "tcpdump syntax", "default 300",
                  "default 30)", "default 131072", "SIGUSR1", "SNAPLEN"):
        assert words in out, words


@pytest.mark.parametrize("value", ["inf", "nan", "-inf", "1e300", "0", "0.5", "2592001",
                                   "soon"])
@pytest.mark.parametrize("option", ["--active-timeout", "--inactive-timeout"])
def test_meter_timeouts_are_seconds_in_the_configs_range(tmp_path, capsys, option, value):
    """Not inf (an OverflowError once), nor nan: an argument error, status 2 (#15 item 16)."""
    conf = config(tmp_path, 9, 9)
    with pytest.raises(SystemExit) as e:
        cli.main(["-c", conf, "meter", "-r", str(PCAPS / "http.pcap"), f"{option}={value}"])
    assert e.value.code == 2
    assert (f"argument {option}: expected a number of seconds from 1 to 2592000 (30 days), "
            f"got {value!r}") in capsys.readouterr().err


def test_meter_timeouts_at_the_ends_of_the_range(tmp_path, capsys):
    conf = tmp_path / "c.yaml"
    conf.write_text("export:\n  collectors: []\nsyslog:\n  enabled: false\n")
    for value in ("1", "2592000"):
        rc, out, err = run(capsys, "-c", str(conf), "meter", "-r", str(PCAPS / "http.pcap"),
                           "--print", "--active-timeout", value, "--inactive-timeout", value)
        assert rc == 0 and out, err


def test_unreadable_capture_is_an_error_naming_it(tmp_path, capsys, v9_socket):
    missing = tmp_path / "nope.pcap"
    rc, out, err = run(capsys, "-c", config(tmp_path, v9_socket.port, 9), "meter",
                       "-r", str(missing))
    assert rc == 1 and str(missing) in err and out == ""


def test_progress_line_on_a_terminal_only(tmp_path):
    import pty
    import sys
    conf = tmp_path / "c.yaml"
    conf.write_text("export:\n  collectors: []\nsyslog:\n  enabled: false\n")
    cmd = [sys.executable, "-m", "nfflowd.cli", "-c", str(conf), "meter",
           "-r", str(PCAPS / "http.pcap")]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave, env=env)
        os.close(slave)
        chunks = []
        while True:                     # until the child closes the terminal
            try:
                data = os.read(master, 4096)
            except OSError:             # EIO: no writer left
                break
            if not data:
                break
            chunks.append(data)
        assert p.wait(timeout=30) == 0
    finally:
        os.close(master)
    tty = b"".join(chunks).decode()
    assert "\r46 packets, 46 IP, 17 flows" in tty and "\r\x1b[K" in tty
    assert "46 IP packets" in tty                       # and the summary after it
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0 and "\r" not in r.stderr and "46 IP packets" in r.stderr


@pytest.mark.parametrize("tsresol,tsoffset,ts", [
    (9, -(1 << 40), 5),             # nanoseconds, 2^40 s before 1970
    (0, None, 1 << 62),             # seconds: 2^62 s, past any 64-bit millisecond
], ids=["before-1970", "past-2^64-ms"])
def test_a_flow_the_encoders_refuse_is_reported_and_fails(tmp_path, capsys, tsresol, tsoffset,
                                                          ts):
    """#15 item 14: a pcapng whose timestamp no NetFlow v9/IPFIX time field
    holds: the encoders send their templates only; the summary says which
    collectors refused how many records and why, and the exit status is 1
    (not "1 flows exported" and no problem)."""
    cap = tmp_path / "time.pcapng"
    cap.write_bytes(shb() + idb(1, tsresol=tsresol, tsoffset=tsoffset)
                    + epb(0, ts, eth(ipv4(17, udp(5353, 53), bytes([198, 51, 100, 7]),
                                          bytes([203, 0, 113, 9])))))
    v9, v10 = UdpCollector(), UdpCollector()
    try:
        conf = tmp_path / "nfflowd.yaml"
        conf.write_text("export:\n  collectors:\n"
                        f"    - {{host: 127.0.0.1, port: {v9.port}, version: 9}}\n"
                        f"    - {{host: 127.0.0.1, port: {v10.port}, version: 10}}\n"
                        "syslog:\n  enabled: false\n")
        rc, out, err = run(capsys, "-c", str(conf), "meter", "-r", str(cap))
        got9, got10 = v9.drain(), v10.drain()
    finally:
        v9.close()
        v10.close()
    # what went out: the options, then templates only (v9 FlowSet 0, IPFIX
    # set 2), no data set; the options' statistics count the refused record
    assert len(got9) == len(got10) == 2
    assert got9[1][20:22] == b"\0\0" and len(got9[1]) == 20 + struct.unpack_from(
        "!H", got9[1], 22)[0]
    assert got10[1][16:18] == b"\0\2" and len(got10[1]) == 16 + struct.unpack_from(
        "!H", got10[1], 18)[0]
    for version, got in ((9, got9), (10, got10)):
        stats = read_options(version, got[:1]).by_template(TID_EXPORTER_STATS)
        assert [(s["exportedFlowRecordTotalCount"], s["notSentFlowTotalCount"])
                for s in stats] == [(0, 1)]
    n9, n10 = f"127.0.0.1:{v9.port}/v9", f"127.0.0.1:{v10.port}/v10"
    assert rc == 1, err
    assert "1 IP packets" in err
    assert f"export problems: {n9}.records_invalid=1, {n10}.records_invalid=1" in err
    for name in (n9, n10):
        assert (f"{name} refused records (not exported there): "
                "flowStartMilliseconds out of range: 1") in err
    assert "error: the encoders refused 2 records (see above)" in err


# the meter without -c, in a network and mount namespace of its own: the
# built-in defaults' collector (127.0.0.1:2055) is this script's socket, and
# the syslog mirror's /dev/log (where the host has one) a socket nobody reads
_DEFAULTS_RUN = r'''
import json, os, socket, subprocess, sys
from nfflowd import cli
result, pcap, default, logsock = sys.argv[1:5]
subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
col = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
col.bind(("127.0.0.1", 2055))
log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
log.bind(logsock)
if os.path.lexists("/dev/log"):
    subprocess.run(["mount", "--bind", logsock, "/dev/log"], check=True, timeout=10)
rc = cli.main(["meter", "-r", pcap, "--print"], default_config=default)
sys.stdout.flush()
got = []
col.settimeout(0.5)
try:
    while len(got) < 1000:
        got.append(col.recv(65535).hex())
except socket.timeout:
    pass
with open(result, "w") as f:
    json.dump({"rc": rc, "datagrams": got}, f)
'''


@pytest.mark.skipif(shutil.which("unshare") is None or os.geteuid() != 0,
                    reason="unshare and root needed (a namespace of its own)")
def test_meter_without_c_runs_on_the_defaults_when_the_default_config_is_missing(
        tmp_path, capsys):
    """#15 item 22: no -c and no default config file: the meter meters on the
    built-in defaults (NetFlow v5 to 127.0.0.1:2055, the syslog mirror) and
    says so; softflowd needs no config either.  A -c naming a missing file,
    and a default file that exists but is bad, stay errors (exit 2)."""
    import json
    import sys
    default = tmp_path / "absent" / "nfflowd.yaml"
    result = tmp_path / "result.json"
    pcap = PCAPS / "dns.pcap"
    r = subprocess.run(["unshare", "--mount", "--net", sys.executable, "-c", _DEFAULTS_RUN,
                        str(result), str(pcap), str(default), str(tmp_path / "log.sock")],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    got = json.loads(result.read_text())
    assert got["rc"] == 0, r.stderr
    assert f"no {default}: the built-in defaults apply (127.0.0.1:2055/v5" in r.stderr
    expected = meter_file(pcap, FlowTable())
    assert len(r.stdout.splitlines()) == len(expected.flows) == 16
    # the default collector got every flow as NetFlow v5
    heads = [bytes.fromhex(d)[:4] for d in got["datagrams"]]
    assert heads and all(h[:2] == b"\0\5" for h in heads)
    assert sum(int.from_bytes(h[2:4], "big") for h in heads) == 16
    # -c naming a missing file stays an error, and so does a bad default file
    rc, out, err = run(capsys, "-c", str(default), "meter", "-r", str(pcap), "--print")
    assert rc == 2 and "cannot read" in err and out == ""
    default.parent.mkdir()
    default.write_text("export: [\n")
    rc = cli.main(["meter", "-r", str(pcap), "--print"], default_config=str(default))
    got = capsys.readouterr()
    assert rc == 2 and "not valid YAML" in got.err and got.out == ""


@needs_nfcapd
def test_if_index_gives_a_files_records_their_ingress_interface(tmp_path, capsys):
    """``--if-index N`` (or ``meter.if_index``): every record of a capture
    file carries ingress N, egress 0, in the CSV and in the v5 records nfcapd
    stores (nfdump %in %out); without either, 0 and 0."""
    port = free_udp_port()
    store = tmp_path / "nfcapd"
    store.mkdir()
    conf = config(tmp_path, port, 5)
    with local_nfcapd(store, port):
        rc, out, err = run(capsys, "-c", conf, "meter", "-r", str(PCAPS / "http.pcap"),
                           "--print", "--if-index", "7")
    assert rc == 0, err
    lines = [line.split(",") for line in out.splitlines()]
    assert len(lines) == 17 and {(c[11], c[12]) for c in lines} == {("7", "0")}
    rows = nfdump_rows(store, "%in %out")
    assert len(rows) == 17 and {tuple(r) for r in rows} == {("7", "0")}
    rc, out, err = run(capsys, "-c", conf, "meter", "-r", str(PCAPS / "http.pcap"), "--print")
    assert rc == 0, err
    assert {tuple(line.split(",")[11:13]) for line in out.splitlines()} == {("0", "0")}
    # the config's meter.if_index, which the option overrides
    p = tmp_path / "ifx.yaml"
    p.write_text("export:\n  collectors: []\nsyslog:\n  enabled: false\n"
                 "meter:\n  if_index: 12\n")
    for extra, want in (((), "12"), (("--if-index", "3"), "3")):
        rc, out, err = run(capsys, "-c", str(p), "meter", "-r", str(PCAPS / "http.pcap"),
                           "--print", *extra)
        assert rc == 0, err
        assert {line.split(",")[11] for line in out.splitlines()} == {want}


def test_if_index_arguments(tmp_path, capsys):
    conf = config(tmp_path, 9, 9)
    rc, _, err = run(capsys, "-c", conf, "meter", "-r", "x.pcap", "--if-index", "-1")
    assert rc == 2 and "--if-index must be from 0 to 4294967295, got -1" in err
    rc, _, err = run(capsys, "-c", conf, "meter", "-r", "x.pcap", "--if-index", str(2**32))
    assert rc == 2 and "--if-index must be from 0" in err
    rc, _, err = run(capsys, "-c", conf, "meter", "-i", "lo", "--if-index", "3")
    assert rc == 2 and "--if-index is for -r FILE" in err
    p = tmp_path / "bad.yaml"
    p.write_text("export:\n  collectors: []\nmeter:\n  if_index: lo\n")
    rc, _, err = run(capsys, "-c", str(p), "meter", "-r", "x.pcap")
    assert rc == 2 and "meter.if_index" in err
    with pytest.raises(SystemExit):
        cli.main(["meter", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--if-index N" in out and "Akvorado drops flows whose ingress and egress interface " \
        "are both 0" in out
