"""A real NAT in network namespaces, for the end-to-end tests.

    lan (198.51.100.2, 2001:db8:1::2)
      |  veth
    fw  (198.51.100.1, 2001:db8:1::1 | 203.0.113.1, 2001:db8:2::1)
      |  veth          nftables masquerade out of fw-wan, IPv4 and IPv6
    wan (203.0.113.2, 2001:db8:2::2)

Only documentation ranges are used, and nothing leaves the namespaces.
Loopback in fw is not tracked (``notrack``), as an administrator would set it
up: otherwise the export datagrams to a local collector would be connections
themselves and feed back into the records.

Also here: the small readers the tests share, for ``conntrack -L -o extended``
and for ``nfdump`` output, and a bounded nfcapd runner.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEER = HERE / "peer.py"

LAN4, FW_LAN4, FW_WAN4, WAN4 = "198.51.100.2", "198.51.100.1", "203.0.113.1", "203.0.113.2"
LAN6, FW_LAN6, FW_WAN6, WAN6 = "2001:db8:1::2", "2001:db8:1::1", "2001:db8:2::1", "2001:db8:2::2"

# loopback untracked (the export datagrams to a local collector)
NFT_NOTRACK_LO = """
table inet nfflowd_test_raw {
    chain prerouting {
        type filter hook prerouting priority raw; policy accept;
        iifname "lo" notrack
    }
    chain output {
        type filter hook output priority raw; policy accept;
        oifname "lo" notrack
    }
}
"""
NFT_RULES = """
table inet nfflowd_test_nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "fw-wan" masquerade
    }
}
""" + NFT_NOTRACK_LO


def skip_reason() -> str | None:
    """Why the namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, conntrack)"
    for tool in ("ip", "nft", "conntrack"):
        if shutil.which(tool) is None:
            return f"needs the '{tool}' command (Debian: iproute2, nftables, conntrack)"
    probe = f"nfflowd-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def run(*cmd, check=True, timeout=30, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                       timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({r.returncode}): "
                           f"{r.stderr.strip() or r.stdout.strip()}")
    return r


class Namespaces:
    """Commands in network namespaces: ``ns`` runs one to its end,
    ``spawn`` starts one (stopped by ``stop_all``)."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def ns(self, name, *cmd, **kw):
        return run("ip", "netns", "exec", name, *cmd, **kw)

    def spawn(self, name, *cmd, **kw) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", name, *map(str, cmd)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            stop(p)
        self.procs.clear()


class NatLab(Namespaces):
    def __init__(self, tag: str | None = None):
        super().__init__()
        tag = tag or str(os.getpid())
        self.lan = f"nff{tag}-lan"
        self.fw = f"nff{tag}-fw"
        self.wan = f"nff{tag}-wan"

    # -- building and tearing down ---------------------------------------
    def setup(self):
        self.teardown()
        for n in (self.lan, self.fw, self.wan):
            run("ip", "netns", "add", n)
            self.ns(n, "ip", "link", "set", "lo", "up")
        run("ip", "link", "add", "lan0", "netns", self.lan, "type", "veth",
            "peer", "name", "fw-lan", "netns", self.fw)
        run("ip", "link", "add", "fw-wan", "netns", self.fw, "type", "veth",
            "peer", "name", "wan0", "netns", self.wan)
        self.ns(self.lan, "ip", "addr", "add", f"{LAN4}/24", "dev", "lan0")
        self.ns(self.lan, "ip", "-6", "addr", "add", f"{LAN6}/64", "dev", "lan0", "nodad")
        self.ns(self.fw, "ip", "addr", "add", f"{FW_LAN4}/24", "dev", "fw-lan")
        self.ns(self.fw, "ip", "-6", "addr", "add", f"{FW_LAN6}/64", "dev", "fw-lan", "nodad")
        self.ns(self.fw, "ip", "addr", "add", f"{FW_WAN4}/24", "dev", "fw-wan")
        self.ns(self.fw, "ip", "-6", "addr", "add", f"{FW_WAN6}/64", "dev", "fw-wan", "nodad")
        self.ns(self.wan, "ip", "addr", "add", f"{WAN4}/24", "dev", "wan0")
        self.ns(self.wan, "ip", "-6", "addr", "add", f"{WAN6}/64", "dev", "wan0", "nodad")
        for n, dev in ((self.lan, "lan0"), (self.fw, "fw-lan"), (self.fw, "fw-wan"),
                       (self.wan, "wan0")):
            self.ns(n, "ip", "link", "set", dev, "up")
        self.ns(self.lan, "ip", "route", "add", "default", "via", FW_LAN4)
        self.ns(self.lan, "ip", "-6", "route", "add", "default", "via", FW_LAN6)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            self.ns(self.fw, "sysctl", "-qw", key)
        self.ns(self.fw, "nft", "-f", "-", input=NFT_RULES)
        # conntrack exists in fw once the nat table is there; now its options
        for key in ("net.netfilter.nf_conntrack_acct=1", "net.netfilter.nf_conntrack_timestamp=1"):
            self.ns(self.fw, "sysctl", "-qw", key)
        return self

    def teardown(self):
        self.stop_all()
        for n in (self.lan, self.fw, self.wan):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)

    def __enter__(self):
        return self.setup()

    def __exit__(self, *exc):
        self.teardown()

    # -- processes ----------------------------------------------------------
    def start_servers(self, port=8080, lifetime=90):
        p = self.spawn(self.wan, sys.executable, PEER, "serve", WAN4, WAN6,
                       "--port", port, "--lifetime", lifetime)
        line = p.stdout.readline()
        if "READY" not in line:
            raise RuntimeError(f"echo server did not start: {p.stderr.read()}")
        return p

    def client(self, *args, timeout=15) -> tuple[str, int]:
        """Run a peer client in lan; returns its local (address, port)."""
        r = self.ns(self.lan, sys.executable, PEER, *args, timeout=timeout)
        m = re.search(r"LOCAL (\S+) (\d+)", r.stdout)
        return m.group(1), int(m.group(2))

    def ping(self, addr, count=3):
        self.ns(self.lan, "ping", "-q", "-c", count, "-i", "0.2", "-W", "2", addr)

    def mixed_traffic(self):
        """The end-to-end tests' six connections across the NAT: TCP, UDP and
        ICMP echo over IPv4 and over IPv6, to the echo servers on port 8080."""
        self.client("tcp", WAN4, 8080, 1500)
        self.client("udp", WAN4, 8080, 200, 3)
        self.ping(WAN4, 3)
        self.client("tcp", WAN6, 8080, 900)
        self.client("udp", WAN6, 8080, 120, 2)
        self.ping(WAN6, 2)

    def ifindex(self, name, dev) -> int:
        """The index of interface ``dev`` in namespace ``name`` (ip -j link)."""
        import json
        out = self.ns(name, "ip", "-j", "link", "show", "dev", dev).stdout
        return json.loads(out)[0]["ifindex"]

    def conntrack_list(self) -> list["CtEntry"]:
        r = self.ns(self.fw, "conntrack", "-L", "-o", "extended,id", check=False)
        return [e for e in map(parse_conntrack_line, r.stdout.splitlines()) if e]

    def flush(self):
        self.ns(self.fw, "conntrack", "-F", check=False)


def stop(p: subprocess.Popen, sig=signal.SIGTERM, timeout=10):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


# -- conntrack -L -o extended ----------------------------------------------------
@dataclass
class CtEntry:
    family: int
    proto: int
    orig: dict
    reply: dict
    ct_id: int

    def key(self):
        o = self.orig
        return (o["src"], o["dst"], o.get("sport"), o.get("dport"), self.proto)


def parse_conntrack_line(line: str) -> CtEntry | None:
    """``ipv4 2 tcp 6 117 TIME_WAIT src=.. dst=.. sport=.. dport=.. packets=..
    bytes=.. src=.. ... [ASSURED] mark=0 ... id=NNN``"""
    parts = line.split()
    if len(parts) < 5 or parts[0] not in ("ipv4", "ipv6"):
        return None
    family = 4 if parts[0] == "ipv4" else 6
    proto = int(parts[3])
    groups: list[dict] = []
    ct_id = 0
    for tok in parts[4:]:
        if "=" not in tok:
            continue
        k, v = tok.split("=", 1)
        if k == "src":
            groups.append({})
        if k == "id":
            ct_id = int(v)          # the last id= is the conntrack id ...
            if groups and "bytes" not in groups[-1] and "icmp_id" not in groups[-1]:
                groups[-1]["icmp_id"] = int(v)   # ... one inside a tuple, the ICMP id
        elif groups and k in ("src", "dst", "sport", "dport", "packets", "bytes",
                              "type", "code") and k not in groups[-1]:
            groups[-1][k] = v if k in ("src", "dst") else int(v)
    if len(groups) < 2:
        return None
    return CtEntry(family, proto, groups[0], groups[1], ct_id)


# -- nfcapd and nfdump ----------------------------------------------------------
class Nfcapd:
    """A real nfcapd collecting into a temp dir, in a namespace (or not)."""

    def __init__(self, lab: NatLab | None, workdir: Path, port: int, bind="127.0.0.1"):
        self.dir = Path(workdir) / f"nfcapd-{port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = ["nfcapd", "-w", str(self.dir), "-b", bind, "-p", str(port), "-t", "3600"]
        if lab is not None:
            self.proc = lab.spawn(lab.fw, *cmd)
        else:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True)
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"nfcapd did not start: {self.proc.stderr.read()}")

    def stop(self):
        """Stop nfcapd; it writes its current file on SIGTERM."""
        stop(self.proc)

    def dump(self, fmt: str, *extra) -> list[str]:
        files = sorted(p for p in self.dir.rglob("nfcapd.*") if p.is_file())
        out = []
        for f in files:
            r = run("nfdump", "-q", "-N", "-r", f, "-o", f"fmt:{fmt}", *extra)
            out.extend(line.strip() for line in r.stdout.splitlines() if line.strip())
        return out


def wait_for(predicate, timeout=15.0, interval=0.1):
    """Poll ``predicate`` until true or the timeout; returns its last value."""
    end = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < end:
        time.sleep(interval)
        value = predicate()
    return value


# -- packet capture and listening sockets (added for test_e2e_v9_ipfix) ---------
class Capture:
    """dumpcap on one interface of a namespace into a pcapng file, bounded by
    ``-a duration:N`` (it stops by itself even if the test never gets to
    ``stop``).  dumpcap writes every packet as it comes, so the file can be
    read while the capture runs."""

    def __init__(self, lab: NatLab, ns: str, iface: str, bpf: str, path, duration=60):
        self.path = Path(path)
        self.proc = lab.spawn(ns, "dumpcap", "-q", "-i", iface, "-f", bpf,
                              "-a", f"duration:{int(duration)}", "-w", self.path)
        self.log: list[str] = []
        import threading
        self._reader = threading.Thread(
            target=lambda: self.log.extend(iter(self.proc.stderr.readline, "")), daemon=True)
        self._reader.start()
        # "Capturing on" comes once the interface is open; the file may
        # appear a moment later
        wait_for(lambda: (any("Capturing on" in line for line in self.log)
                          and self.path.exists()) or self.proc.poll() is not None, timeout=15)
        if self.proc.poll() is not None or not self.path.exists():
            self._reader.join(5)
            raise RuntimeError(f"dumpcap did not start: {''.join(self.log)}")
        self.received = self.dropped = None

    def packets(self) -> int:
        """Packets in the file so far (its complete pcapng packet blocks);
        cheap enough to poll."""
        import struct
        try:
            data = self.path.read_bytes()
        except OSError:
            return 0
        n, off, order = 0, 0, "<"
        while off + 12 <= len(data):
            if data[off:off + 4] == b"\x0a\x0d\x0d\x0a":       # section header
                order = "<" if data[off + 8:off + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            btype, blen = struct.unpack_from(order + "II", data, off)
            if blen < 12 or off + blen > len(data):
                break                       # being written
            if btype in (3, 6):             # simple / enhanced packet block
                n += 1
            off += blen
        return n

    def stop(self):
        """Stop dumpcap (SIGTERM: it closes the file and reports its counts);
        sets ``received`` and ``dropped`` from its report."""
        stop(self.proc)
        self._reader.join(5)
        m = re.search(r"received/dropped on interface .*?: (\d+)/(\d+)", "".join(self.log))
        if m:
            self.received, self.dropped = int(m.group(1)), int(m.group(2))


def udp_listening(lab: NatLab, ns: str, port: int) -> bool:
    """Whether a UDP socket is bound to ``port`` in namespace ``ns``."""
    r = lab.ns(ns, "ss", "-Hlun", check=False)
    return any(re.search(rf":{port}\s", line + " ") for line in r.stdout.splitlines())
