"""End to end: every record's ingress and egress interface index is the
firewall's own index of the interface its packets crossed.

    lan0 (198.51.100.2/26, 2001:db8:1::2)     lan1 (198.51.100.66/26, 2001:db8:3::2)
        |  fw-lan0                                |  fw-lan1
        +------------------ fw -------------------+
                            |  fw-wan (203.0.113.1, 2001:db8:2::1)
                           wan (203.0.113.2, 2001:db8:2::2)

In fw: source NAT from lan0 out of fw-wan, destination NAT of port 8081 on
fw's outside addresses to lan1's port 8080, lan0 <-> lan1 routed without
NAT, and a prefix (198.51.100.128/25, 2001:db8:99::/64) whose one host
address, .200 and ::1, exists both in lan1 and in wan: routed to lan1 first,
then moved to wan while nfflowd runs.  fw itself opens a connection to wan
(no ingress) and accepts one from lan0 (no egress).  The records are read
back from the syslog mirror's INPUT/OUTPUT columns (IPv4 and IPv6) and from
nfdump's ``%in %out`` over a real nfcapd (NetFlow v5, IPv4); the expected
indexes come from ``ip -j link`` in fw.  The mark test: an nft rule marks
each connection by its input interface and ``interfaces.map`` turns the
mark into indexes, one of them no route could give.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import time

import pytest

from natlab import NFT_NOTRACK_LO, PEER, Namespaces, Nfcapd, run, skip_reason, stop, wait_for
from test_e2e_nat import SyslogCatcher, start_nfflowd
from test_e2e_nat import write_config as nat_config

_reason = skip_reason() or (None if shutil.which("nfcapd") and shutil.which("nfdump")
                            else "needs nfcapd and nfdump (Debian: nfdump)")
pytestmark = [pytest.mark.root, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

LAN0_4, LAN0_6 = "198.51.100.2", "2001:db8:1::2"
LAN1_4, LAN1_6 = "198.51.100.66", "2001:db8:3::2"
WAN_4, WAN_6 = "203.0.113.2", "2001:db8:2::2"
FW_WAN4, FW_WAN6, FW_LAN0_4 = "203.0.113.1", "2001:db8:2::1", "198.51.100.1"
MOVED_4, MOVED_6 = "198.51.100.200", "2001:db8:99::1"

NFT_NAT = """
table inet nfflowd_ifs_nat {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "fw-wan" ip daddr 203.0.113.1 tcp dport 8081 dnat ip to 198.51.100.66:8080
        iifname "fw-wan" ip6 daddr 2001:db8:2::1 tcp dport 8081 dnat ip6 to [2001:db8:3::2]:8080
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        iifname "fw-lan0" oifname "fw-wan" masquerade
    }
}
""" + NFT_NOTRACK_LO

NFT_MARK = """
table inet nfflowd_ifs_mark {
    chain prerouting {
        type filter hook prerouting priority mangle; policy accept;
        ct state new ct mark set iifname map { "fw-lan0" : 1, "fw-wan" : 2, "fw-lan1" : 3 }
    }
}
"""


class IfLab(Namespaces):
    """The namespaces above (names tagged with the pid), torn down on exit."""

    def __init__(self):
        super().__init__()
        tag = f"nfi{os.getpid()}"
        self.lan0, self.lan1, self.fw, self.wan = (f"{tag}-{n}" for n in
                                                   ("lan0", "lan1", "fw", "wan"))

    def __enter__(self):
        self.teardown()
        for n in (self.lan0, self.lan1, self.fw, self.wan):
            run("ip", "netns", "add", n)
            self.ns(n, "ip", "link", "set", "lo", "up")
        for host, hdev, fdev in ((self.lan0, "eth0", "fw-lan0"), (self.lan1, "eth0", "fw-lan1"),
                                 (self.wan, "eth0", "fw-wan")):
            run("ip", "link", "add", hdev, "netns", host, "type", "veth",
                "peer", "name", fdev, "netns", self.fw)
            self.ns(host, "ip", "link", "set", hdev, "up")
            self.ns(self.fw, "ip", "link", "set", fdev, "up")
        addrs = [(self.lan0, "eth0", LAN0_4 + "/26", LAN0_6 + "/64"),
                 (self.lan1, "eth0", LAN1_4 + "/26", LAN1_6 + "/64"),
                 (self.wan, "eth0", WAN_4 + "/24", WAN_6 + "/64"),
                 (self.fw, "fw-lan0", FW_LAN0_4 + "/26", "2001:db8:1::1/64"),
                 (self.fw, "fw-lan1", "198.51.100.65/26", "2001:db8:3::1/64"),
                 (self.fw, "fw-wan", FW_WAN4 + "/24", FW_WAN6 + "/64"),
                 # the moved prefix's host, on both sides
                 (self.lan1, "lo", MOVED_4 + "/32", MOVED_6 + "/128"),
                 (self.wan, "lo", MOVED_4 + "/32", MOVED_6 + "/128")]
        for n, dev, a4, a6 in addrs:
            self.ns(n, "ip", "addr", "add", a4, "dev", dev)
            self.ns(n, "ip", "-6", "addr", "add", a6, "dev", dev, "nodad")
        for n, gw4, gw6 in ((self.lan0, FW_LAN0_4, "2001:db8:1::1"),
                            (self.lan1, "198.51.100.65", "2001:db8:3::1"),
                            (self.wan, FW_WAN4, FW_WAN6)):
            self.ns(n, "ip", "route", "add", "default", "via", gw4)
            self.ns(n, "ip", "-6", "route", "add", "default", "via", gw6)
        self.move_prefix("lan1")
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            self.ns(self.fw, "sysctl", "-qw", key)
        self.ns(self.fw, "nft", "-f", "-", input=NFT_NAT)
        for key in ("net.netfilter.nf_conntrack_acct=1",
                    "net.netfilter.nf_conntrack_timestamp=1"):
            self.ns(self.fw, "sysctl", "-qw", key)
        self.index = {dev: self.ifindex(dev) for dev in ("fw-lan0", "fw-lan1", "fw-wan")}
        assert len(set(self.index.values())) == 3
        return self

    def move_prefix(self, where):
        """Route the moved prefix to lan1 or to wan (``ip route replace``)."""
        gw4, gw6, dev = ((LAN1_4, LAN1_6, "fw-lan1") if where == "lan1"
                         else (WAN_4, WAN_6, "fw-wan"))
        self.ns(self.fw, "ip", "route", "replace", "198.51.100.128/25", "via", gw4, "dev", dev)
        self.ns(self.fw, "ip", "-6", "route", "replace", "2001:db8:99::/64", "via", gw6,
                "dev", dev)

    def ifindex(self, dev) -> int:
        import json
        return json.loads(self.ns(self.fw, "ip", "-j", "link", "show", "dev", dev).stdout)[0][
            "ifindex"]

    def teardown(self):
        self.stop_all()
        for n in (self.lan0, self.lan1, self.fw, self.wan):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)

    def __exit__(self, *exc):
        self.teardown()

    def serve(self, ns, *addrs, port=8080, lifetime=120):
        p = self.spawn(ns, sys.executable, PEER, "serve", *addrs, "--port", port,
                       "--lifetime", lifetime)
        if "READY" not in p.stdout.readline():
            raise RuntimeError(f"echo server did not start in {ns}: {p.stderr.read()}")

    def client(self, ns, proto, addr, port) -> tuple[str, int]:
        """One TCP or UDP exchange from ``ns``; its local (address, port)."""
        args = ("tcp", addr, port, 300) if proto == "tcp" else ("udp", addr, port, 100, 2)
        out = self.ns(ns, sys.executable, PEER, *args, timeout=15).stdout
        addr_port = next(line.split()[1:] for line in out.splitlines()
                         if line.startswith("LOCAL"))
        return addr_port[0], int(addr_port[1])

    def conntrack(self):
        from natlab import parse_conntrack_line
        r = self.ns(self.fw, "conntrack", "-L", "-o", "extended,id", check=False)
        return [e for e in map(parse_conntrack_line, r.stdout.splitlines()) if e]


@pytest.fixture
def lab():
    with IfLab() as lab:
        yield lab


def write_config(tmp_path, port, syslog_path, interfaces):
    """test_e2e_nat's configuration (a v5 collector, the syslog mirror) with
    ``interfaces:``."""
    cfg = nat_config(tmp_path, port, syslog_path)
    cfg.write_text(cfg.read_text() + f"interfaces: {interfaces}\n")
    return cfg


def norm(addr: str) -> str:
    return str(ipaddress.ip_address(addr))


def record_keys(entry):
    """The connection's records as (src, dst, sport, dport, proto, is_reply):
    the original before and after translation (one when nothing was
    translated), and the reply."""
    o, r, p = entry.orig, entry.reply, entry.proto
    pre = (norm(o["src"]), norm(o["dst"]), o["sport"], o["dport"], p, False)
    post = (norm(r["dst"]), norm(r["src"]), r["dport"], r["sport"], p, False)
    reply = (norm(r["src"]), norm(r["dst"]), r["sport"], r["dport"], p, True)
    return [pre, reply] if post == pre else [pre, post, reply]


class Run:
    """Connections made, each with the (ingress, egress) its original
    direction must show; the records read back and compared."""

    def __init__(self, lab, catcher, collector):
        self.lab, self.catcher, self.collector = lab, catcher, collector
        self.expected: dict[tuple, tuple[int, int]] = {}
        self.post_nat: set[tuple] = set()      # keys of the post-NAT view (v5, CSV only)

    def connect(self, ns, proto, addr, port, pair):
        local = self.lab.client(ns, proto, addr, port)
        pnum = 6 if proto == "tcp" else 17
        entry = next((e for e in self.lab.conntrack()
                      if (norm(e.orig["src"]), e.orig.get("sport"), e.proto)
                      == (norm(local[0]), local[1], pnum)), None)
        assert entry is not None, (ns, proto, addr, local, self.lab.conntrack())
        keys = record_keys(entry)
        for key in keys:
            self.expected[key[:5]] = pair[::-1] if key[5] else pair
        if len(keys) == 3:
            self.post_nat.add(keys[1][:5])

    def csv_rows(self):
        out = {}
        for line in self.catcher.collect():
            f = line.split(": ", 1)[1].split(",")
            out[(norm(f[8]), norm(f[9]), int(f[13]), int(f[14]), int(f[15]))] = \
                (int(f[11]), int(f[12]))
        return out

    def flush_and_check(self):
        """End every connection (conntrack -F); every expected record must
        come through the syslog mirror with its pair."""
        self.lab.ns(self.lab.fw, "conntrack", "-F", check=False)
        want = dict(self.expected)
        wait_for(lambda: want.keys() <= self.csv_rows().keys(), timeout=20)
        got = self.csv_rows()
        assert {k: got.get(k) for k in want} == want
        return got


def stopped(daemon, log) -> None:
    """Stop nfflowd; it must exit cleanly."""
    stop(daemon)
    daemon.log_reader.join(5)       # the process has exited: its stderr is at EOF
    assert daemon.returncode == 0, "".join(log)


def read_back(collector, *fields) -> dict:
    """Stop nfcapd; nfdump's records as (src, dst, sport, dport, proto) ->
    the values of ``fields`` (nfdump format tokens)."""
    collector.stop()
    out = {}
    for line in collector.dump("|".join(("%sa", "%da", "%sp", "%dp", "%pr") + fields)):
        sa, da, sp, dp, pr, *rest = (x.strip() for x in line.split("|"))
        proto = {"TCP": 6, "UDP": 17}.get(pr) or int(pr)
        out[(norm(sa), norm(da), int(sp), int(dp), proto)] = tuple(rest)
    return out


def test_interfaces_from_routes(lab, tmp_path):
    ix = lab.index
    lan0, lan1, wan = ix["fw-lan0"], ix["fw-lan1"], ix["fw-wan"]
    lab.serve(lab.wan, WAN_4, WAN_6, MOVED_4, MOVED_6)
    lab.serve(lab.lan1, LAN1_4, LAN1_6, MOVED_4, MOVED_6)
    lab.serve(lab.fw, FW_LAN0_4, port=8090)
    collector = Nfcapd(lab, tmp_path, port=20556)
    catcher = SyslogCatcher(tmp_path / "log.sock")
    cfg = write_config(tmp_path, 20556, catcher.path, "{method: route}")
    daemon, log = start_nfflowd(lab, cfg)
    try:
        text = "".join(log)
        assert "event=interfaces" in text and "method=route" in text, text
        first = Run(lab, catcher, collector)
        for proto in ("tcp", "udp"):
            for dst in (WAN_4, WAN_6):
                first.connect(lab.lan0, proto, dst, 8080, (lan0, wan))          # SNAT
            first.connect(lab.lan0, proto, LAN1_4, 8080, (lan0, lan1))          # routed
            first.connect(lab.lan0, proto, LAN1_6, 8080, (lan0, lan1))
            first.connect(lab.lan0, proto, MOVED_4, 8080, (lan0, lan1))         # before the move
            first.connect(lab.lan0, proto, MOVED_6, 8080, (lan0, lan1))
        first.connect(lab.wan, "tcp", FW_WAN4, 8081, (wan, lan1))               # DNAT
        first.connect(lab.wan, "tcp", FW_WAN6, 8081, (wan, lan1))
        first.connect(lab.fw, "tcp", WAN_4, 8080, (0, wan))                     # fw's own
        first.connect(lab.lan0, "tcp", FW_LAN0_4, 8090, (lan0, 0))              # to fw
        first.flush_and_check()

        # the prefix moves to wan: the next connections' records follow it
        lab.move_prefix("wan")
        time.sleep(0.2)
        second = Run(lab, catcher, collector)
        for proto in ("tcp", "udp"):
            second.connect(lab.lan0, proto, MOVED_4, 8080, (lan0, wan))
            second.connect(lab.lan0, proto, MOVED_6, 8080, (lan0, wan))
        second.flush_and_check()
    finally:
        stopped(daemon, log)

    # NetFlow v5 read back by nfdump: IPv4's records, the same indexes
    v5 = {k: (int(i), int(o)) for k, (i, o) in read_back(collector, "%in", "%out").items()}
    want4 = {k: v for run_ in (first, second) for k, v in run_.expected.items()
             if ":" not in k[0]}
    assert len(want4) >= 20
    # the moved prefix's connections differ between the two runs: each key once
    assert {k: v5.get(k) for k in want4} == want4


def test_interfaces_from_the_mark_map(lab, tmp_path):
    ix = lab.index
    lab.ns(lab.fw, "nft", "-f", "-", input=NFT_MARK)
    lab.serve(lab.wan, WAN_4, WAN_6)
    lab.serve(lab.lan1, LAN1_4, LAN1_6)
    collector = Nfcapd(lab, tmp_path, port=20557)
    catcher = SyslogCatcher(tmp_path / "log.sock")
    # mark 1 by name; mark 2 by index, its egress one no route gives; mark 3
    # (from lan1) is not in the map: zeros
    cfg = write_config(tmp_path, 20557, catcher.path,
                       "{method: mark, map: {1: [fw-lan0, fw-wan], "
                       f"2: [{ix['fw-wan']}, 4242]}}}}")
    daemon, log = start_nfflowd(lab, cfg)
    try:
        r = Run(lab, catcher, collector)
        r.connect(lab.lan0, "tcp", WAN_4, 8080, (ix["fw-lan0"], ix["fw-wan"]))
        r.connect(lab.lan0, "udp", WAN_6, 8080, (ix["fw-lan0"], ix["fw-wan"]))
        r.connect(lab.wan, "tcp", FW_WAN4, 8081, (ix["fw-wan"], 4242))
        r.connect(lab.wan, "tcp", FW_WAN6, 8081, (ix["fw-wan"], 4242))
        r.connect(lab.lan1, "tcp", WAN_4, 8080, (0, 0))
        r.flush_and_check()
    finally:
        stopped(daemon, log)
    assert "method=mark" in "".join(log)


def test_reload_turns_the_lookup_on_and_off(lab, tmp_path):
    """interfaces.method none, then route by a reload (SIGHUP: the rtnetlink
    socket opened and dumped), then none again."""
    import signal
    ix = lab.index
    lab.serve(lab.wan, WAN_4, WAN_6)
    collector = Nfcapd(lab, tmp_path, port=20558)
    catcher = SyslogCatcher(tmp_path / "log.sock")
    cfg = write_config(tmp_path, 20558, catcher.path, "{method: none}")
    daemon, log = start_nfflowd(lab, cfg)
    try:
        for i, (method, pair) in enumerate((("none", (0, 0)),
                                            ("route", (ix["fw-lan0"], ix["fw-wan"])),
                                            ("none", (0, 0)))):
            if i:
                write_config(tmp_path, 20558, catcher.path, f"{{method: {method}}}")
                daemon.send_signal(signal.SIGHUP)
                assert wait_for(lambda: sum("event=reloaded" in x for x in log) == i,
                                timeout=15), "".join(log)
            r = Run(lab, catcher, collector)
            r.connect(lab.lan0, "tcp", WAN_4, 8080, pair)
            r.connect(lab.lan0, "udp", WAN_6, 8080, pair)
            r.flush_and_check()
    finally:
        stopped(daemon, log)
    assert sum("event=interfaces method=" in x for x in log) == 3, "".join(log)


def test_interface_names_reach_the_collector(lab, tmp_path):
    """The daemon's links (name, or alias where set) go to an IPFIX
    collector in the options: nfdump names each record's interfaces, and a
    link changed while nfflowd runs (an alias set) names the next records."""
    ix = lab.index
    lab.ns(lab.fw, "ip", "link", "set", "fw-lan0", "alias", "inside zero")
    lab.serve(lab.wan, WAN_4, WAN_6)
    lab.serve(lab.lan1, LAN1_4, LAN1_6)
    collector = Nfcapd(lab, tmp_path, port=20559)
    catcher = SyslogCatcher(tmp_path / "log.sock")
    cfg = write_config(tmp_path, 20559, catcher.path, "{method: route}")
    cfg.write_text(cfg.read_text().replace("version: 5}", "version: 10, records: [flows]}"))
    daemon, log = start_nfflowd(lab, cfg)
    try:
        first = Run(lab, catcher, collector)
        first.connect(lab.lan0, "tcp", WAN_4, 8080, (ix["fw-lan0"], ix["fw-wan"]))
        first.connect(lab.lan0, "udp", WAN_6, 8080, (ix["fw-lan0"], ix["fw-wan"]))
        first.flush_and_check()
        lab.ns(lab.fw, "ip", "link", "set", "fw-lan1", "alias", "inside one")
        time.sleep(0.3)
        second = Run(lab, catcher, collector)
        second.connect(lab.lan0, "tcp", LAN1_4, 8080, (ix["fw-lan0"], ix["fw-lan1"]))
        second.flush_and_check()
        time.sleep(1.5)                 # the last export reaches nfcapd
    finally:
        stopped(daemon, log)
    names = {k: (int(i), inam, int(o), onam) for k, (i, inam, o, onam)
             in read_back(collector, "%in", "%inam", "%out", "%onam").items()}
    want = {}
    for run_, lan1_name in ((first, "fw-lan1"), (second, "inside one")):
        label = {ix["fw-lan0"]: "inside zero", ix["fw-wan"]: "fw-wan", ix["fw-lan1"]: lan1_name}
        for key, (i, o) in run_.expected.items():
            if key not in run_.post_nat:        # (IPFIX: one record a direction)
                want[key] = (i, label[i], o, label[o])
    assert {k: names.get(k) for k in want} == want
