"""Conntrack zones: two connections with identical tuples in two zones are
two connections, and both are exported, each with its zone.

    in1 (198.51.100.2) --veth-- fw-a  \\
                                       fw (zone 1 from fw-a, zone 2 from fw-b) -- fw-wan -- wan (203.0.113.2)
    in2 (198.51.100.2) --veth-- fw-b  /

Both inside hosts have the same address and send from the same port to the
same server port: the tuples are identical, only nft's ``ct zone set iif
map`` (raw prerouting, priority -300) tells them apart.  nfflowd runs in fw:
its syslog mirror shows both records, and tshark reads each one's zone as
ingressVRFID/egressVRFID from its NetFlow v9 and IPFIX records; the records
both decoders and the correlator make of the real kernel's events carry it
too.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from natlab import Capture, NatLab, Nfcapd, run, skip_reason, stop, udp_listening, wait_for
from test_e2e_nat import SyslogCatcher, start_nfflowd
from test_e2e_v9_ipfix import PORT9, PORT10, frames

ROOT = Path(__file__).resolve().parent.parent
_reason = skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

IN4, GW4, FW_WAN4, WAN4 = "198.51.100.2", "198.51.100.1", "203.0.113.1", "203.0.113.2"
SPORT, DPORT = 41234, 7777

ZONE_RULES = """table inet nfflowd_test_zones {
    chain pre {
        type filter hook prerouting priority raw; policy accept;
        ct zone set iifname map { "fw-a" : 1, "fw-b" : 2 }
    }
    chain lo_pre {
        type filter hook prerouting priority -400; policy accept;
        iifname "lo" notrack
    }
    chain lo_out {
        type filter hook output priority -400; policy accept;
        oifname "lo" notrack
    }
}
"""


class ZoneLab(NatLab):
    """Two inside namespaces, fw and wan (NatLab's processes and teardown);
    ``ns`` takes a key of ``names``."""

    def __init__(self):
        super().__init__(f"z{os.getpid()}")
        self.names = {"in1": self.lan + "1", "in2": self.lan + "2", "fw": self.fw,
                      "wan": self.wan}

    def ns(self, key, *cmd, **kw):
        return super().ns(self.names.get(key, key), *cmd, **kw)

    def setup(self):
        self.teardown()
        n = self.names
        for name in n.values():
            run("ip", "netns", "add", name)
        for key in n:
            self.ns(key, "ip", "link", "set", "lo", "up")
        for inside, fwdev in (("in1", "fw-a"), ("in2", "fw-b")):
            run("ip", "link", "add", "eth0", "netns", n[inside], "type", "veth",
                "peer", "name", fwdev, "netns", self.fw)
            self.ns(inside, "ip", "addr", "add", f"{IN4}/24", "dev", "eth0")
            self.ns(inside, "ip", "link", "set", "eth0", "up")
            self.ns("fw", "ip", "addr", "add", f"{GW4}/24", "dev", fwdev)
            self.ns("fw", "ip", "link", "set", fwdev, "up")
            self.ns(inside, "ip", "route", "add", "default", "via", GW4)
        run("ip", "link", "add", "fw-wan", "netns", self.fw, "type", "veth",
            "peer", "name", "eth0", "netns", n["wan"])
        self.ns("fw", "ip", "addr", "add", f"{FW_WAN4}/24", "dev", "fw-wan")
        self.ns("wan", "ip", "addr", "add", f"{WAN4}/24", "dev", "eth0")
        self.ns("fw", "ip", "link", "set", "fw-wan", "up")
        self.ns("wan", "ip", "link", "set", "eth0", "up")
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0",
                    "net.ipv4.conf.fw-a.rp_filter=0", "net.ipv4.conf.fw-b.rp_filter=0",
                    "net.ipv4.conf.default.rp_filter=0"):
            self.ns("fw", "sysctl", "-qw", key)
        self.ns("fw", "nft", "-f", "-", input=ZONE_RULES)
        for key in ("acct=1", "timestamp=1"):
            self.ns("fw", "sysctl", "-qw", f"net.netfilter.nf_conntrack_{key}")
        return self

    def send(self, inside):
        """One UDP datagram from ``inside``, port SPORT to wan:DPORT."""
        code = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
                f"s.bind(('{IN4}', {SPORT})); s.sendto(b'z' * 100, ('{WAN4}', {DPORT}))")
        self.ns(inside, sys.executable, "-c", code)

    def conntrack(self) -> str:
        return self.ns("fw", "conntrack", "-L", "-p", "udp", "--dport", str(DPORT),
                       check=False).stdout

    def teardown(self):
        super().teardown()
        for name in self.names.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


# The real decoders and correlator over the real kernel's events, in fw:
# each record's (zone, conn_id, src, sport, dst, dport, packets).
RECORDS = r"""
import select, socket, sys, time
from nfflowd.io.netlink import ConntrackSocket
from nfflowd.ctblocks import decode_blocks
from nfflowd.conntrack import decode_datagrams
from nfflowd.correlate import Correlator
sock = ConntrackSocket(rcvbuf=1 << 22)
print("READY", flush=True)
out = {"objects": [], "blocks": []}
corr = {"objects": Correlator(), "blocks": Correlator()}
dec = {"objects": decode_datagrams, "blocks": decode_blocks}
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end and len(out["objects"]) < 4:
    if not select.select([sock], [], [], 0.2)[0]:
        continue
    batch = sock.recv()
    for k in out:
        corr[k].handle_batch(batch.decoded(dec[k]).events, time.time_ns(), out[k])
for k, flows in out.items():
    for f in flows:
        print(k, f.zone, f.conn_id, socket.inet_ntoa(f.src), f.sport,
              socket.inet_ntoa(f.dst), f.dport, f.packets, f.direction)
"""


def test_identical_tuples_in_two_zones_are_two_records_each_with_its_zone(tmp_path):
    with ZoneLab() as lab:
        catcher = SyslogCatcher(tmp_path / "log.sock")
        sinks = [Nfcapd(lab, tmp_path, port) for port in (PORT9, PORT10)]
        assert wait_for(lambda: udp_listening(lab, lab.fw, PORT9)
                        and udp_listening(lab, lab.fw, PORT10), timeout=10)
        pcap = tmp_path / "export.pcapng"
        capture = Capture(lab, lab.fw, "lo", f"udp and (dst port {PORT9} or dst port {PORT10})",
                          pcap, duration=60)
        cfg = tmp_path / "nfflowd.yaml"
        cfg.write_text("export:\n  collectors:\n"
                       f"    - {{host: 127.0.0.1, port: {PORT9}, version: 9}}\n"
                       f"    - {{host: 127.0.0.1, port: {PORT10}, version: 10}}\n"
                       f"syslog: {{enabled: true, address: {catcher.path}}}\n"
                       f"pidfile: {tmp_path}/nfflowd.pid\n")
        daemon, log = start_nfflowd(lab, cfg)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        reader = lab.spawn(lab.fw, sys.executable, "-c", RECORDS, 30, env=env, cwd=ROOT)
        assert "READY" in reader.stdout.readline()
        lab.send("in1")
        lab.send("in2")
        entries = [line for line in lab.conntrack().splitlines() if f"sport={SPORT}" in line]
        assert len(entries) == 2, lab.conntrack()
        assert sorted(e.split("zone=")[1].split()[0] for e in entries) == ["1", "2"]
        time.sleep(0.3)
        lab.ns("fw", "conntrack", "-D", "-p", "udp", "--dport", str(DPORT))
        out, err = reader.communicate(timeout=40)
        assert reader.returncode == 0, err
        recs = [line.split() for line in out.splitlines() if line[:1] in ("o", "b")]
        for path in ("objects", "blocks"):
            mine = [r[1:] for r in recs if r[0] == path]
            orig = [r for r in mine if r[7] == "0"]          # ORIGINAL
            # two connections, two conntrack ids, one record each per direction
            assert len(mine) == 4, out
            assert sorted(r[0] for r in orig) == ["1", "2"], out
            assert len({r[1] for r in orig}) == 2
            assert {tuple(r[2:7]) for r in orig} == {(IN4, str(SPORT), WAN4, str(DPORT), "1")}
            assert sorted(r[0] for r in mine) == ["1", "1", "2", "2"]
        # the daemon exported both: two identical original-direction lines
        want = f"{IN4},{WAN4},"
        assert wait_for(lambda: sum(want in line and f",{SPORT},{DPORT}," in line
                                    for line in catcher.collect()) == 2, timeout=15), \
            "".join(log) + "\n".join(catcher.collect())
        # v9 and IPFIX: each record's zone as ingressVRFID and egressVRFID
        fields = ["cflow.srcport", "cflow.dstport", "cflow.ingress_vrfid",
                  "cflow.egress_vrfid"]

        def zones(port):
            got = []
            for fr in frames(pcap, port, fields, check=False):
                if len(set(map(len, fr.values()))) == 1:        # one value per record
                    got += [r for r in zip(*(fr[f] for f in fields))
                            if {r[0], r[1]} == {str(SPORT), str(DPORT)}]
            return sorted(got)
        want = sorted([(str(SPORT), str(DPORT), z, z) for z in ("1", "2")]
                      + [(str(DPORT), str(SPORT), z, z) for z in ("1", "2")])
        for port in (PORT9, PORT10):
            assert wait_for(lambda: zones(port) == want, timeout=15), (port, zones(port))
        stop(daemon)
        assert daemon.returncode == 0, "".join(log)
        capture.stop()
        for s in sinks:
            s.stop()
