"""``nfflowd meter -i IFACE``: live capture on a veth pair in namespaces the
test creates, known traffic from the peer, flows exported to a real nfcapd on
127.0.0.1 inside the meter's namespace and read back by nfdump.

    peer (198.51.100.1, 2001:db8:6::1) --veth-- meter (198.51.100.2, 2001:db8:6::2)

UDP datagrams of known sizes, each echoed, give exactly known flows; a TCP
connection's packets depend on the kernel's ACK timing, so dumpcap captures
the same interface at the same time and tshark reads its file: the
independent count the TCP flows must equal.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from natlab import Capture, Namespaces, Nfcapd, run, skip_reason, stop, wait_for

ROOT = Path(__file__).resolve().parents[1]
PEER_PY = Path(__file__).resolve().parent / "peer.py"

PEER4, METER4 = "198.51.100.1", "198.51.100.2"
PEER6, METER6 = "2001:db8:6::1", "2001:db8:6::2"
PORT = 7007

_skip = skip_reason()
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")


class Veth(Namespaces):
    """Two namespaces joined by a veth pair: ``peer`` (va) and ``fw`` (vb,
    where the meter and nfcapd run; named fw for natlab's Nfcapd)."""

    def __init__(self, tag: str):
        self.peer = f"nffl{tag}-a"
        self.fw = f"nffl{tag}-b"
        super().__init__()

    def __enter__(self):
        self.teardown()
        for n in (self.peer, self.fw):
            run("ip", "netns", "add", n)
            self.ns(n, "ip", "link", "set", "lo", "up")
        run("ip", "link", "add", "va", "netns", self.peer, "type", "veth",
            "peer", "name", "vb", "netns", self.fw)
        for n, dev, a4, a6 in ((self.peer, "va", PEER4, PEER6), (self.fw, "vb", METER4, METER6)):
            self.ns(n, "ip", "addr", "add", f"{a4}/24", "dev", dev)
            self.ns(n, "ip", "-6", "addr", "add", f"{a6}/64", "dev", dev, "nodad")
            self.ns(n, "ip", "link", "set", dev, "up")
        return self

    def teardown(self):
        self.stop_all()
        for n in (self.peer, self.fw):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)

    def __exit__(self, *exc):
        self.teardown()


@pytest.fixture
def veth():
    with Veth(str(os.getpid())) as v:
        yield v


class Meter:
    """``nfflowd meter -i vb`` in the meter namespace, its stderr collected."""

    def __init__(self, lab: Veth, tmp: Path, port: int, *args, name="m", version=9):
        self.conf = tmp / f"{name}.yaml"
        self.conf.write_text("export:\n  collectors:\n"
                             f"    - {{host: 127.0.0.1, port: {port}, version: {version}}}\n"
                             "syslog:\n  enabled: false\n")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = lab.spawn(lab.fw, sys.executable, "-m", "nfflowd.cli", "-c", self.conf,
                              "meter", "-i", "vb", "--inactive-timeout", 600, *args, env=env)
        self.log: list[str] = []
        self._t = threading.Thread(
            target=lambda: self.log.extend(iter(self.proc.stderr.readline, "")), daemon=True)
        self._t.start()

    @property
    def err(self) -> str:
        return "".join(self.log)

    def wait_ready(self):
        assert wait_for(lambda: "metering vb" in self.err or self.proc.poll() is not None,
                        timeout=20), self.err
        assert self.proc.poll() is None, self.err

    def finish(self, sig=signal.SIGTERM, timeout=20) -> int:
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        rc = self.proc.wait(timeout)
        self._t.join(5)
        return rc


def nfcapd(lab, tmp, port):
    n = Nfcapd(lab, tmp, port)
    assert wait_for(lambda: re.search(rf":{port}\s", lab.ns(lab.fw, "ss", "-Hlun").stdout + " "),
                    timeout=10)
    return n


def flows(collector: Nfcapd) -> dict:
    """(src, dst, sport, dport, proto) -> [packets, bytes], summed over records."""
    out: dict = {}
    for line in collector.dump("%sa %da %sp %dp %pr %pkt %byt", "-6"):
        sa, da, sp, dp, pr, pkt, byt = line.split()
        pr = {"UDP": 17, "TCP": 6, "ICMP": 1, "ICMP6": 58, "IPv6-ICMP": 58}.get(pr, pr)
        pr = int(pr) if str(pr).isdigit() else pr
        k = (str(ipaddress.ip_address(sa)), str(ipaddress.ip_address(da)), int(float(sp)),
             int(dp.split(".")[0]) if "." in dp else int(dp), pr)
        v = out.setdefault(k, [0, 0])
        v[0] += int(pkt)
        v[1] += int(byt)
    return out


def peer(lab, *args) -> tuple[str, int]:
    r = lab.ns(lab.peer, sys.executable, PEER_PY, *args, timeout=30)
    m = re.search(r"LOCAL (\S+) (\d+)", r.stdout)
    return str(ipaddress.ip_address(m.group(1))), int(m.group(2))


def tshark_tcp(path, src, sport) -> tuple[int, int]:
    """(packets, IP bytes) of one TCP direction in a capture file."""
    r = run("tshark", "-n", "-r", path, "-Y", f"tcp.srcport == {sport} and ip.src == {src}",
            "-T", "fields", "-e", "ip.len", timeout=60)
    lens = [int(x) for x in r.stdout.split()]
    return len(lens), sum(lens)


def test_live_capture_gives_the_known_flows_and_the_filter_drops_the_rest(veth, tmp_path):
    c_all = nfcapd(veth, tmp_path, 9995)
    c_flt = nfcapd(veth, tmp_path, 9996)
    server = veth.spawn(veth.fw, sys.executable, PEER_PY, "serve", METER4, METER6,
                        "--port", PORT, "--lifetime", 60)
    assert "READY" in server.stdout.readline()
    meter_all = Meter(veth, tmp_path, 9995, name="all")
    meter_flt = Meter(veth, tmp_path, 9996, "--bpf", "udp and ip", name="flt")
    meter_all.wait_ready()
    meter_flt.wait_ready()
    oracle = Capture(veth, veth.fw, "vb", f"tcp port {PORT}", tmp_path / "oracle.pcapng")

    u4 = peer(veth, "udp", METER4, PORT, 100, 5)     # 5 datagrams of 100 bytes, echoed
    u6 = peer(veth, "udp", METER6, PORT, 300, 3)
    t4 = peer(veth, "tcp", METER4, PORT, 20000)

    # SIGUSR1: the statistics so far, and the meter goes on
    time.sleep(0.5)
    meter_all.proc.send_signal(signal.SIGUSR1)
    assert wait_for(lambda: "statistics: vb:" in meter_all.err, timeout=10), meter_all.err
    assert meter_all.proc.poll() is None
    stats = re.search(r"statistics: vb: (\d+) packets captured", meter_all.err)
    assert int(stats.group(1)) >= 16

    time.sleep(0.3)
    oracle.stop()
    assert meter_all.finish() == 0, meter_all.err
    assert meter_flt.finish() == 0, meter_flt.err
    time.sleep(0.5)
    c_all.stop()
    c_flt.stop()

    got = flows(c_all)
    want = {
        (PEER4, METER4, u4[1], PORT, 17): [5, 5 * 128],
        (METER4, PEER4, PORT, u4[1], 17): [5, 5 * 128],
        (PEER6, METER6, u6[1], PORT, 17): [3, 3 * 348],
        (METER6, PEER6, PORT, u6[1], 17): [3, 3 * 348],
        (PEER4, METER4, t4[1], PORT, 6): list(tshark_tcp(oracle.path, PEER4, t4[1])),
        (METER4, PEER4, PORT, t4[1], 6): list(tshark_tcp(oracle.path, METER4, PORT)),
    }
    assert want[(PEER4, METER4, t4[1], PORT, 6)][0] >= 6      # SYN, data, FIN, ACKs
    assert {k: v for k, v in got.items() if k[4] != 58} == want
    # the rest is IPv6 neighbour discovery, nothing else
    assert all(k[4] == 58 for k in got.keys() - want.keys())
    # the filtered meter: IPv4 UDP only
    assert flows(c_flt) == {k: v for k, v in want.items() if k[4] == 17 and "." in k[0]}

    end = meter_all.err
    assert re.search(r"end: vb: \d+ packets captured, \d+ IP packets", end)
    assert re.search(r"kernel: \d+ packets received by the socket, 0 dropped", end)
    assert "skipped, not metered (arp=" in end          # ARP seen, and said
    assert "filter 'udp and ip' applied in the kernel" in meter_flt.err
    assert re.search(r"end: vb: 10 packets captured, 10 IP packets, 1280 bytes, 2 flows",
                     meter_flt.err), meter_flt.err


def test_count_stops_the_capture_and_exports(veth, tmp_path):
    col = nfcapd(veth, tmp_path, 9995)
    server = veth.spawn(veth.fw, sys.executable, PEER_PY, "serve", METER4,
                        "--port", PORT, "--lifetime", 30)
    assert "READY" in server.stdout.readline()
    m = Meter(veth, tmp_path, 9995, "--bpf", "udp", "-n", "7")
    m.wait_ready()
    u4 = peer(veth, "udp", METER4, PORT, 50, 6)         # 12 packets; the meter takes 7
    assert m.finish(sig=None) == 0, m.err               # it stops by itself
    assert "count reached" in m.err and "7 packets captured, 7 IP packets" in m.err
    time.sleep(0.5)
    col.stop()
    assert flows(col) == {(PEER4, METER4, u4[1], PORT, 17): [4, 4 * 78],
                          (METER4, PEER4, PORT, u4[1], 17): [3, 3 * 78]}


@pytest.mark.parametrize("version", [5, 10])
def test_live_records_carry_the_interfaces_index(veth, tmp_path, version):
    """``-i vb``: every record's ingress interface is vb's index in the
    meter's namespace (not 0, which Akvorado drops with egress 0 too), its
    egress 0: in the CSV and in the v5 or IPFIX records nfcapd stores (%in
    %out; IPFIX's flowDirection %dir: ingress)."""
    col = nfcapd(veth, tmp_path, 9997)
    # another interface first, so that vb's index is not the lowest after lo
    veth.ns(veth.fw, "ip", "link", "add", "vx0", "type", "veth", "peer", "name", "vx1")
    veth.ns(veth.fw, "ip", "link", "add", "vb2", "type", "veth", "peer", "name", "vb3")
    index = int(veth.ns(veth.fw, "cat", "/sys/class/net/vb/ifindex").stdout)
    assert index > 1
    server = veth.spawn(veth.fw, sys.executable, PEER_PY, "serve", METER4,
                        "--port", PORT, "--lifetime", 30)
    assert "READY" in server.stdout.readline()
    m = Meter(veth, tmp_path, 9997, "--bpf", "udp", "-n", "4", "--print", version=version)
    m.wait_ready()
    u4 = peer(veth, "udp", METER4, PORT, 50, 2)
    assert m.finish(sig=None) == 0, m.err               # it stops by itself
    lines = [line.split(",") for line in m.proc.stdout.read().splitlines() if line.strip()]
    assert len(lines) == 2 and {(c[11], c[12]) for c in lines} == {(str(index), "0")}
    time.sleep(0.5)
    col.stop()
    fmt = "%sp %dp %in %out" + (" %dir" if version == 10 else "")
    rows = col.dump(fmt)
    extra = ["I"] if version == 10 else []
    assert sorted(r.split() for r in rows) == sorted(
        [[str(u4[1]), str(PORT), str(index), "0", *extra],
         [str(PORT), str(u4[1]), str(index), "0", *extra]])


@pytest.mark.parametrize("version", [9, 10])
def test_live_meter_names_its_interface_in_the_options(veth, tmp_path, version):
    """``-i vb`` to a v9/IPFIX collector: the options name vb by its index in
    the meter's namespace (the index its records carry), and say that
    nothing is sampled (nfflowd.options)."""
    from test_options import read as read_options
    from test_template_timer import datagrams, udp_receiver
    veth.ns(veth.fw, "ip", "link", "add", "vx0", "type", "veth", "peer", "name", "vx1")
    index = int(veth.ns(veth.fw, "cat", "/sys/class/net/vb/ifindex").stdout)
    received = tmp_path / "received.bin"
    receiver = udp_receiver(veth, received, 9998, lifetime=30)
    server = veth.spawn(veth.fw, sys.executable, PEER_PY, "serve", METER4,
                        "--port", PORT, "--lifetime", 30)
    assert "READY" in server.stdout.readline()
    m = Meter(veth, tmp_path, 9998, "--bpf", "udp", "-n", "2", version=version)
    m.wait_ready()
    peer(veth, "udp", METER4, PORT, 50, 1)
    assert m.finish(sig=None) == 0, m.err               # it stops by itself
    try:
        assert wait_for(lambda: len(datagrams(received)) >= 2, timeout=10)
    finally:
        stop(receiver)
    r = read_options(version, datagrams(received))
    scope = "scope:Interface" if version == 9 else "scope:ingressInterface"
    assert r.by_template(512) == [{scope: index, "ingressInterface": index,
                                   "interfaceDescription": "vb", "interfaceName": "vb"}]
    assert [x["samplingInterval"] for x in r.by_template(513)] == [1]


def test_bad_filter_or_interface_on_live_capture(veth, tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("export:\n  collectors: []\nsyslog:\n  enabled: false\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = veth.ns(veth.fw, sys.executable, "-m", "nfflowd.cli", "-c", conf, "meter", "-i", "vb",
                "--bpf", "tcp and port http-nope", check=False, env=env)
    assert r.returncode == 2
    assert "bad BPF filter 'tcp and port http-nope'" in r.stderr
    r = veth.ns(veth.fw, sys.executable, "-m", "nfflowd.cli", "-c", conf, "meter", "-i", "eth9",
                check=False, env=env)
    assert r.returncode == 1 and "no such network interface: 'eth9'" in r.stderr


def test_the_daemon_meters_the_configured_interfaces(tmp_path):
    """``meter.interfaces`` in the config: the daemon meters fw-lan of a real
    NAT alongside conntrack, and the meter's flows (pre-NAT on the LAN side,
    so told apart from conntrack's records by their addresses) reach nfcapd
    with exactly the datagrams sent; their ingress interface (the syslog
    mirror's INPUT) is fw-lan's index, their egress (OUTPUT) 0."""
    from natlab import LAN4, WAN4, NatLab
    from test_e2e_nat import SyslogCatcher
    with NatLab(f"m{os.getpid() % 10000}") as lab:
        lab.start_servers(lifetime=60)
        col = Nfcapd(lab, tmp_path, 9995)
        catcher = SyslogCatcher(tmp_path / "log.sock")
        cfg = tmp_path / "nfflowd.yaml"
        cfg.write_text("export:\n  collectors:\n    - {host: 127.0.0.1, port: 9995, version: 9}\n"
                       f"syslog: {{enabled: true, address: {catcher.path}}}\n"
                       f"pidfile: {tmp_path}/nfflowd.pid\n"
                       "meter:\n  inactive_timeout: 1\n"
                       "  interfaces:\n    - {name: fw-lan, bpf: 'udp port 8080'}\n")
        p = lab.spawn(lab.fw, sys.executable, "-m", "nfflowd.cli", "-f", "-c", cfg, "start",
                      env=dict(os.environ, PYTHONPATH=str(ROOT)))
        log: list[str] = []
        reader = threading.Thread(target=lambda: log.extend(iter(p.stderr.readline, "")),
                                  daemon=True)
        reader.start()
        try:
            wait_for(lambda: any("event=ready" in line for line in log) or p.poll() is not None,
                     timeout=20)
            assert p.poll() is None, "".join(log)
            assert any("event=metering" in line and "fw-lan" in line for line in log)
            _, cport = lab.client("udp", WAN4, 8080, 200, 4)
            # the inactive timeout (1 s) ends both flows while the daemon runs
            want = {(LAN4, WAN4, cport, 8080, 17): [4, 4 * 228],
                    (WAN4, LAN4, 8080, cport, 17): [4, 4 * 228]}
            time.sleep(3)
            r = lab.ns(lab.fw, sys.executable, "-m", "nfflowd.cli", "-c", cfg, "check",
                       check=False, env=dict(os.environ, PYTHONPATH=str(ROOT)))
            assert "meter.fw-lan.packets = 8" in r.stdout, r.stdout
            assert "meter.fw-lan.flows_exported = 2" in r.stdout, r.stdout
            assert "meter.fw-lan.kernel_drops = 0" in r.stdout, r.stdout
        finally:
            stop(p)
        reader.join(5)
        assert p.returncode == 0, "".join(log)
        time.sleep(0.5)
        col.stop()
        got = flows(col)
        assert {k: v for k, v in got.items() if k[:2] in ((LAN4, WAN4), (WAN4, LAN4))} == want
        # the meter's two records in the mirror (pre-NAT LAN side, port 8080):
        # INPUT fw-lan's index, OUTPUT 0 (the CSV: ..., nexthop, input, output,
        # ...); conntrack's original-direction record, should the connection
        # have ended meanwhile, has the same addresses and ports but leaves
        # by fw-wan
        index = lab.ns(lab.fw, "cat", "/sys/class/net/fw-lan/ifindex").stdout.strip()
        rows = [line.split(": ", 1)[-1].split(",") for line in catcher.collect()]
        seen = [(r[11], r[12]) for r in rows if len(r) > 15 and {r[8], r[9]} == {LAN4, WAN4}
                and "8080" in (r[13], r[14]) and str(cport) in (r[13], r[14])]
        assert seen.count((index, "0")) == 2, catcher.collect()
        assert all(i == index and o != "0" for i, o in seen if (i, o) != (index, "0")), seen


def test_the_kernel_filter_tests_offloaded_vlan_tags(veth):
    """Live, the kernel has taken an offloaded 802.1Q tag out of the frame
    before the socket filter runs: the program for -i must test the tag's
    ancillary fields ([vlanp], [vlan_tci]), as tcpdump's do; a capture
    file's program tests the bytes.  Other filters compile the same."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]);"
            "from nfflowd.io.bpf import compile_for_interface as c;"
            "print(c('vlan 10 and udp', 'vb', 1, 256).dump()); print('==');"
            "print(c('udp port 53', 'vb', 1, 256).code.hex())")
    r = veth.ns(veth.fw, sys.executable, "-c", code, ROOT)
    live, plain = r.stdout.split("==\n")
    from nfflowd.io.bpf import compile_filter
    assert "[vlanp]" in live and "[vlan_tci]" in live
    assert "vlanp" not in compile_filter("vlan 10 and udp", 1, 256).dump()
    assert plain.strip() == compile_filter("udp port 53", 1, 256).code.hex()
