"""Burst: a table of connections ended at once, nfflowd against ulogd2.

    sudo python bench/bench_burst.py [--connections N] [--keep]

As root, in network namespaces (tests/natlab.py: lan -> fw (NAT) -> wan):

1. in fw, two small IPFIX collectors (this file's ``sink`` mode: it keeps
   every datagram with its kernel receive time, SO_TIMESTAMPNS, and counts
   what its socket dropped, SO_RXQ_OVFL), one per exporter;
2. in fw, Debian's ulogd2 (``ulogd -c CONF``; the config is written here:
   NFCT input in event mode, DESTROY events only, no hash table, a 128 MiB
   netlink buffer; IPFIX output over UDP to its collector) and nfflowd
   (``python -m nfflowd.cli -f -c CFG start``, IPFIX over UDP, flow records
   only, conntrack.rcvbuf 128 MiB): both before any connection exists (with
   the kernel default nf_conntrack_events=2 a connection created while nobody
   listens never sends events);
3. N UDP connections from lan to wan through the NAT (tests/burst.py),
   checked with ``conntrack -C``;
4. ``conntrack -F`` in fw, then a bounded wait until both collectors are
   quiet.

Prints for each exporter: the connections exported (nfflowd sends one record
per direction, so its distinct original-direction records, and records / 2;
ulogd2 sends one record per connection, the original tuple with the counters
of both directions summed), duplicates, the overruns (nfflowd's ``overruns=``
counter; ulogd2's "losing events" log lines) and the messages the kernel
dropped on each netlink socket (/proc/net/netlink, Drops), the time from the
first to the last record after the flush, and the ratio nfflowd / ulogd2 of
that time (<= 1.0: nfflowd drains the burst as fast or faster); the same from
the flush's start to the last record (a late first record shortens the first
span, not the second).  Where the time went, from the flush to quiet: each
exporter's CPU (user / system), its time runnable but waiting for a CPU and
its context switches (/proc/PID/schedstat, status), its collector's CPU, and
the CPU of ``conntrack -F`` itself (the kernel's flush runs in its context),
and the host's steal time (/proc/stat: CPU time the hypervisor gave to other
guests while this one wanted it; a run with much of it measures the host);
``--timeline S`` adds the records each collector received per S seconds.

The collectors are measuring apparatus on the same two CPUs: they sleep and
drain their receive buffers every SINK_DRAIN seconds, reading each datagram's
kernel arrival time (SO_TIMESTAMPNS), and parse only when quiet.  A collector
woken per datagram (the first version of this file) took 0.26-0.29 s of CPU
for nfflowd's 17.6k datagrams and 0.34-0.47 s for ulogd2's 14.3k during a
200k flush; draining, 0.19-0.22 s and 0.13-0.17 s.

Scheduling: ulogd2 makes itself real-time at the highest priority when it
starts (SCHED_RR 99 here, Debian's 2.0.8; "scheduler configuration" in its
log if refused), so it never waits for a CPU; under the normal scheduler
nfflowd shares the other one with the flush and the collectors, and waits.
By default nfflowd gets the same (its ``sched_priority``, the value ulogd2
runs at); ``--nfflowd-sched-priority 0`` runs it under the normal scheduler.
Both policies are printed.

The issue's target: all N connections, zero overruns, and nfflowd's
first-to-last time no more than ulogd2's in the same run.

Every wait is bounded; every process started here is stopped in ``finally``
and has a lifetime of its own (``timeout``); the namespaces are deleted; a
raised nf_conntrack_max (global, init namespace) is restored.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import re
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))
from ipfix_sink import learn, sets  # noqa: E402  (the tests' IPFIX reader)
sys.path.insert(0, str(ROOT))
from nfflowd.app import schedule  # noqa: E402
BURST = TESTS / "burst.py"

NFFLOWD_PORT, ULOGD_PORT = 24801, 24802
SINK_DRAIN = 0.05               # seconds between the collectors' drains
SINK_KILL_AFTER = 120           # seconds a collector has after SIGTERM to write its results
SINK_DRAIN_MAX = 100_000        # datagrams per drain at most
SO_TIMESTAMPNS, SO_RXQ_OVFL, SO_RCVBUFFORCE = 35, 40, 33
# ulogd2's NFCT input on ENOBUFS: "We are losing events, increasing buffer size
# to N", or, at its maximum, "We are losing events. Please, consider ..."
LOSS_RE = re.compile(r"losing events", re.I)


# ---------------------------------------------------------------------------
# the collector (run as a child: ``bench_burst.py sink ADDR PORT OUT``)
# ---------------------------------------------------------------------------
def sink_main(argv) -> int:
    """Receive IPFIX datagrams until SIGTERM or the lifetime; keep each one
    with its kernel receive time; rewrite OUT.status (records so far) every
    0.2 s; at the end decode everything and write OUT (JSON).

    The collector is measuring apparatus sharing the exporters' CPUs, so it
    takes as little CPU as it can while datagrams arrive: it sleeps, then
    drains what its (large) receive buffer queued, every SINK_DRAIN seconds, in
    one go (the receive time is the kernel's, stamped on arrival, so reading
    later changes nothing); it counts records only when a drain found
    nothing new (a datagram is parsed once either way)."""
    ap = argparse.ArgumentParser(prog="bench_burst.py sink")
    ap.add_argument("addr"), ap.add_argument("port", type=int), ap.add_argument("out")
    ap.add_argument("--lifetime", type=float, default=600)
    ap.add_argument("--lan", default="198.51.100.2", help="original source of the burst")
    a = ap.parse_args(argv)
    s = collector_socket(a.addr, a.port, 256 << 20)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    templates: dict = {}
    kept: list = []               # (kernel receive ns, datagram)
    counted = 0                   # kept[:counted] are in records/first/last
    records = 0
    first = last = None
    drops = 0
    status = Path(a.out + ".status")
    next_status = 0.0
    print("READY", flush=True)
    end = time.monotonic() + a.lifetime
    cmsg_space = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(4)
    recvmsg = s.recvmsg
    while not stop and time.monotonic() < end:
        time.sleep(SINK_DRAIN)
        got = 0
        for _ in range(SINK_DRAIN_MAX):     # a drain is bounded too
            try:
                d, anc, _flags, _addr = recvmsg(65536, cmsg_space)
            except (BlockingIOError, InterruptedError):
                break
            ts = None
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(data) >= 16:
                    sec, nsec = struct.unpack("qq", data[:16])
                    ts = sec * 1_000_000_000 + nsec
                elif level == socket.SOL_SOCKET and typ == SO_RXQ_OVFL and len(data) >= 4:
                    drops = struct.unpack("I", data[:4])[0]
            kept.append((ts if ts is not None else time.time_ns(), d))
            got += 1
        if not got:
            # quiet: count what the last drains brought
            for ts, d in kept[counted:]:
                n = _count(d, templates)
                if n:
                    records += n
                    first = first or ts
                    last = ts
            counted = len(kept)
        now = time.monotonic()
        if now >= next_status:
            _write_atomic(status, json.dumps({"records": records, "datagrams": len(kept),
                                              "first": first, "last": last, "drops": drops}))
            next_status = now + 0.2
    s.close()
    _write_atomic(Path(a.out), json.dumps(_decode_all(kept, a.lan, drops)))
    return 0


def collector_socket(addr: str, port: int, rcvbuf: int) -> socket.socket:
    """A non-blocking UDP socket bound to addr:port, its receive buffer
    ``rcvbuf`` (forced where allowed), counting what it drops (SO_RXQ_OVFL:
    the count so far comes with each datagram)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, rcvbuf)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
    s.bind((addr, port))
    s.setblocking(False)
    return s


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _count(d: bytes, templates: dict) -> int:
    """Data records in one message (templates learnt as they come)."""
    n = 0
    for sid, body, bend in sets(d):
        if sid == 2:
            learn(d, body, bend, templates)
        elif sid >= 256 and sid in templates and templates[sid][1]:
            n += (bend - body) // templates[sid][1]
    return n


# sourceIPv4/6, destinationIPv4/6, ports, protocol, flowEndReason, packets
_KEYS = {8: "src", 27: "src", 12: "dst", 28: "dst", 7: "sport", 11: "dport", 4: "proto",
         136: "reason", 2: "packets", 86: "packets"}


def _decode_all(kept, lan: str, drops: int) -> dict:
    """Every record: per datagram (receive ns, records); the original
    direction's keys (source = the lan host) to count connections once."""
    templates: dict = {}
    per_dgram = []
    orig = Counter()
    reasons = Counter()
    records = 0
    for ts, d in kept:
        n = 0
        for sid, body, bend in sets(d):
            if sid == 2:
                learn(d, body, bend, templates)
                continue
            if sid < 256 or sid not in templates:
                continue
            fields, rlen = templates[sid]
            if not rlen:
                continue
            wanted = [(_KEYS[ie], fo, ln) for ie, fo, ln in fields if ie in _KEYS]
            p = body
            while p + rlen <= bend:
                rec = {}
                for name, fo, ln in wanted:
                    raw = d[p + fo:p + fo + ln]
                    rec[name] = (str(ipaddress.ip_address(raw)) if name in ("src", "dst")
                                 else int.from_bytes(raw, "big"))
                if rec.get("src") == lan:
                    orig[(rec.get("sport"), rec.get("dst"), rec.get("dport"),
                          rec.get("proto"))] += 1
                reasons[rec.get("reason", 0)] += 1
                n += 1
                p += rlen
        if n:
            per_dgram.append((ts, n))
            records += n
    return {"records": records, "datagrams": len(kept), "drops": drops,
            "per_datagram": per_dgram,
            "orig_distinct": len(orig), "orig_records": sum(orig.values()),
            "orig_duplicates": sum(c - 1 for c in orig.values() if c > 1),
            "reasons": {str(k): v for k, v in reasons.items()}}


# ---------------------------------------------------------------------------
# the bench
# ---------------------------------------------------------------------------
def ulogd_plugins() -> dict:
    """Paths of the NFCT input and IPFIX output plugins, from dpkg -L."""
    want = {"NFCT": "ulogd_inpflow_NFCT.so", "IPFIX": "ulogd_output_IPFIX.so"}
    found = {}
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\n", "ulogd2*"],
                       capture_output=True, text=True)
    pkgs = [p for p in r.stdout.split() if p] or ["ulogd2"]
    for pkg in pkgs:
        r = subprocess.run(["dpkg", "-L", pkg], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            for key, name in want.items():
                if line.endswith("/" + name):
                    found[key] = line.strip()
    missing = [k for k in want if k not in found]
    if missing:
        raise SystemExit(f"ulogd2 plugins not found ({', '.join(missing)}): "
                         "apt-get install ulogd2")
    return found


def ulogd_config(path: Path, log: Path, plugins: dict, port: int, bufsize: int,
                 maxsize: int, mtu: int) -> None:
    """NFCT sets netlink_socket_buffer_size only when it is below
    netlink_socket_buffer_maxsize (strictly: equal leaves the kernel default);
    on ENOBUFS it doubles the buffer while that stays below the maximum."""
    path.write_text(f"""# written by bench/bench_burst.py
[global]
logfile="{log}"
loglevel=3
plugin="{plugins['NFCT']}"
plugin="{plugins['IPFIX']}"
stack=ct1:NFCT,ipfix1:IPFIX

[ct1]
event_mask=0x00000004
hash_enable=0
netlink_socket_buffer_size={bufsize}
netlink_socket_buffer_maxsize={maxsize}

[ipfix1]
oid=1
host="127.0.0.1"
port={port}
proto="udp"
mtu={mtu}
""")


def start_ulogd(lab, work: Path, procs: dict, plugins: dict, port: int, lifetime: float,
                bufsize: int = 128 << 20, maxsize: int | None = None, mtu: int = 512):
    """Debian's ulogd2 in fw (``ulogd -c CONF``, the config written to
    ``work`` by ``ulogd_config``: NFCT input, DESTROY events only, IPFIX over
    UDP to 127.0.0.1:``port``), as ``procs["ulogd2"]``; waits (bounded) until
    its log says it is connected.  ``maxsize`` None: ``bufsize`` + 1, a fixed
    buffer like nfflowd's.  Returns (Proc, a function returning its log's
    text)."""
    conf, logf = work / "ulogd.conf", work / "ulogd.log"
    ulogd_config(conf, logf, plugins, port, bufsize, maxsize or bufsize + 1, mtu)
    procs["ulogd2"] = ul = Proc(lab, lab.fw, "ulogd", "-c", conf, lifetime=lifetime)

    def text() -> str:
        return logf.read_text(errors="replace") if logf.exists() else ""
    wait_for(lambda: "connected to" in text() or ul.p.poll() is not None, 15)
    if ul.p.poll() is not None or "connected to" not in text():
        raise RuntimeError(f"ulogd2 did not start:\n{text()}{''.join(ul.err)}")
    return ul, text


def nfflowd_config(path: Path, workdir: Path, port: int, rcvbuf: int,
                   flush_interval: float | None, sched_priority: int,
                   syslog: str | None = None, new_events: bool = True) -> None:
    """``syslog``: the mirror's address (host:port), None: no mirror;
    ``new_events``: conntrack.new_events."""
    flush = f"\n  flush_interval: {flush_interval}" if flush_interval is not None else ""
    mirror = f"{{enabled: true, address: '{syslog}'}}" if syslog else "{enabled: false}"
    path.write_text(f"""# written by bench/bench_burst.py
export:{flush}
  collectors:
    - {{host: 127.0.0.1, port: {port}, version: 10, records: [flows]}}
syslog: {mirror}
conntrack: {{rcvbuf: {rcvbuf}, new_events: {str(new_events).lower()}}}
pidfile: {workdir}/nfflowd.pid
sched_priority: {sched_priority}
""")


def scheduling(pid: int | None) -> tuple[str, int]:
    """(policy as text, real-time priority or 0) of a process, ("?", 0) when
    it cannot be read."""
    if pid is None:
        return "?", 0
    try:
        return schedule.describe(pid), schedule.realtime_priority(pid)
    except OSError:
        return "?", 0


class Proc:
    """A process in a namespace, its stderr (and stdout) read by threads."""

    def __init__(self, lab, ns, *cmd, lifetime: float, cwd=None, kill_after: int = 10):
        # timeout(1) passes a SIGTERM on and kills kill_after seconds later
        self.p = subprocess.Popen(
            ["ip", "netns", "exec", ns, "timeout", "-k", str(kill_after), str(int(lifetime)),
             *map(str, cmd)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
            start_new_session=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._t = [threading.Thread(target=lambda s=s, b=b: b.extend(iter(s.readline, "")),
                                    daemon=True)
                   for s, b in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self._t:
            t.start()

    def started(self, what: str, marker: str = "READY\n", timeout: float = 15.0,
                stream: str = "out") -> None:
        """Wait (bounded) until a line of its stdout (``stream="err"``: its
        stderr) holds ``marker``; RuntimeError naming ``what`` if it ended or
        the time ran out first."""
        lines = self.out if stream == "out" else self.err

        def seen():
            return any(marker in x for x in lines)
        wait_for(lambda: seen() or self.p.poll() is not None, timeout)
        if self.p.poll() is not None or not seen():
            raise RuntimeError(f"{what} did not start:\n{''.join(self.err)}")

    def child_pid(self) -> int | None:
        """The pid under ``timeout`` (ip netns exec execs timeout itself)."""
        try:
            kids = Path(f"/proc/{self.p.pid}/task/{self.p.pid}/children").read_text().split()
            return int(kids[0]) if kids else None
        except (OSError, ValueError):
            return None

    def stop(self, timeout=30.0) -> int | None:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)       # timeout passes it on
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
                self.p.wait(5)
        for t in self._t:
            t.join(5)
        return self.p.returncode


def wait_for(pred, timeout: float, interval=0.1):
    end = time.monotonic() + timeout
    v = pred()
    while not v and time.monotonic() < end:
        time.sleep(interval)
        v = pred()
    return v


def netlink_drops(lab, pid: int | None) -> tuple[int, int] | None:
    """(Drops, Rmem) summed over the ctnetlink subscriptions (protocol 12,
    groups != 0) that process ``pid`` holds, from fw's /proc/net/netlink."""
    if pid is None:
        return None
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                m = re.match(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                continue
            if m:
                inodes.add(m.group(1))
    except OSError:
        return None
    r = lab.ns(lab.fw, "cat", "/proc/net/netlink", check=False)
    drops = rmem = 0
    seen = False
    for line in r.stdout.splitlines()[1:]:
        f = line.split()
        # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        if len(f) >= 10 and f[1] == "12" and int(f[3], 16) != 0 and f[9] in inodes:
            drops += int(f[8])
            rmem += int(f[4])
            seen = True
    return (drops, rmem) if seen else None


def cpu_seconds(pid: int | None) -> tuple[float, float] | None:
    """User and system CPU seconds of a process so far (/proc/PID/stat)."""
    if pid is None:
        return None
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        tck = os.sysconf("SC_CLK_TCK")
        return int(f[11]) / tck, int(f[12]) / tck
    except (OSError, IndexError, ValueError):
        return None


def steal_seconds() -> float | None:
    """CPU time the hypervisor took from this machine's CPUs so far (the
    steal column of /proc/stat, all CPUs): a noisy host shows here."""
    try:
        f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        return int(f[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def sched_stats(pid: int | None) -> tuple[float, int, int] | None:
    """Seconds spent runnable but waiting for a CPU (/proc/PID/schedstat),
    voluntary and involuntary context switches (/proc/PID/status)."""
    if pid is None:
        return None
    try:
        wait_ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
        st = Path(f"/proc/{pid}/status").read_text()
        vol = int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", st, re.M).group(1))
        invol = int(re.search(r"^nonvoluntary_ctxt_switches:\s+(\d+)", st, re.M).group(1))
        return wait_ns / 1e9, vol, invol
    except (OSError, IndexError, ValueError, AttributeError):
        return None


def read_status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=200_000, metavar="N")
    ap.add_argument("--profile", metavar="FILE", default=None,
                    help="run nfflowd under cProfile, statistics to FILE (slower: for "
                         "finding where the time goes, not for the figures)")
    ap.add_argument("--nfflowd-rcvbuf", type=int, default=128 << 20,
                    help="nfflowd's conntrack.rcvbuf (bytes)")
    ap.add_argument("--ulogd-buffer", type=int, default=128 << 20,
                    help="ulogd2's NFCT netlink_socket_buffer_size (bytes)")
    ap.add_argument("--ulogd-maxsize", type=int, default=None,
                    help="ulogd2's NFCT netlink_socket_buffer_maxsize (default: the buffer "
                         "size + 1, a fixed buffer like nfflowd's)")
    ap.add_argument("--nfflowd-flush-interval", type=float, default=None,
                    help="nfflowd's export.flush_interval (default: nfflowd's own, 1 s)")
    ap.add_argument("--nfflowd-sched-priority", default="ulogd2", metavar="N",
                    help="nfflowd's sched_priority (SCHED_RR at N, 0: the normal scheduler); "
                         "default: as ulogd2 runs, which makes itself SCHED_RR 99 when it "
                         "starts")
    ap.add_argument("--ulogd-mtu", type=int, default=512,
                    help="ulogd2's IPFIX mtu (its default: 512)")
    ap.add_argument("--quiet", type=float, default=5.0,
                    help="seconds without a new record that end the drain")
    ap.add_argument("--drain-timeout", type=float, default=None,
                    help="bound on the drain after the flush (default 60 s + N / 5000)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--timeline", type=float, default=0, metavar="SECONDS",
                    help="also print the records each collector received per interval of "
                         "SECONDS after the flush started")
    if len(sys.argv) > 1 and sys.argv[1] == "sink":
        return sink_main(sys.argv[2:])
    args = ap.parse_args()
    n = args.connections
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, nftables, conntrack)")
    for tool in ("ip", "nft", "conntrack", "ulogd", "timeout", "dpkg"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs the '{tool}' command")
    plugins = ulogd_plugins()
    dports = list(range(9000, 9000 + max(1, math.ceil(n / 50_000))))
    drain_timeout = args.drain_timeout or 60 + n / 5000
    lifetime = 300 + n / 500          # every child's own bound
    from natlab import LAN4, WAN4, NatLab  # noqa: E402

    work = Path(tempfile.mkdtemp(prefix="bench_burst."))
    lab = NatLab(tag=f"b{os.getpid() % 100000}")
    procs: dict[str, Proc] = {}
    ct_max_saved = None
    try:
        ct_max_saved = raise_ct_max(n + n // 20 + 1000)
        lab.setup()
        lab.ns(lab.fw, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=3600")
        lab.ns(lab.fw, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout_stream=3600")
        events = lab.ns(lab.fw, "sysctl", "-n", "net.netfilter.nf_conntrack_events").stdout.strip()
        print(f"connections: {n}; nf_conntrack_events={events}; cpus: {os.cpu_count()}; "
              f"work dir: {work}")

        # -- collectors, then the two exporters, before any connection ---------
        outs = {}
        for name, port in (("nfflowd", NFFLOWD_PORT), ("ulogd2", ULOGD_PORT)):
            outs[name] = work / f"sink-{name}.json"
            procs[f"sink-{name}"] = p = Proc(
                lab, lab.fw, sys.executable, Path(__file__).resolve(), "sink", "127.0.0.1",
                port, outs[name], "--lifetime", lifetime, "--lan", LAN4, lifetime=lifetime + 30,
                # its results are decoded after SIGTERM: 400k records took
                # over 10 s on a slow day here (then timeout killed it)
                kill_after=SINK_KILL_AFTER)
            p.started(f"the collector for {name}")

        ul, ulog_text = start_ulogd(lab, work, procs, plugins, ULOGD_PORT, lifetime,
                                    args.ulogd_buffer, args.ulogd_maxsize, args.ulogd_mtu)

        # ulogd2 sets its own scheduling when it starts (real-time at the
        # highest priority: SCHED_RR 99 here): by default nfflowd gets the same
        if args.nfflowd_sched_priority == "ulogd2":
            sched_priority = scheduling(ul.child_pid())[1]
        else:
            sched_priority = int(args.nfflowd_sched_priority)
        cfg = work / "nfflowd.yaml"
        nfflowd_config(cfg, work, NFFLOWD_PORT, args.nfflowd_rcvbuf, args.nfflowd_flush_interval,
                       sched_priority)
        # --profile FILE: nfflowd runs under cProfile (written when it stops)
        prof = ["-m", "cProfile", "-o", str(Path(args.profile).resolve())] if args.profile else []
        procs["nfflowd"] = nf = Proc(lab, lab.fw, sys.executable, *prof, "-m", "nfflowd.cli",
                                     "-f", "-c", cfg, "start", lifetime=lifetime, cwd=ROOT)
        nf.started("nfflowd", "event=ready", timeout=30, stream="err")
        time.sleep(0.5)
        ul_pid, nf_pid = ul.child_pid(), nf.child_pid()
        if netlink_drops(lab, ul_pid) is None:
            raise RuntimeError("ulogd2 holds no ctnetlink subscription:\n" + ulog_text())
        m = re.search(r"NFCT netlink buffer size has been set to (\d+)", ulog_text())
        ready = next(x for x in nf.err if "event=ready" in x)
        m2 = re.search(r"rcvbuf=(\d+)", ready)
        print(f"netlink receive buffers (SO_RCVBUF as the kernel reports it): "
              f"nfflowd {m2.group(1) if m2 else '?'}, ulogd2 {m.group(1) if m else '?'}"
              f"{'' if args.nfflowd_flush_interval is None else '; nfflowd export.flush_interval ' + str(args.nfflowd_flush_interval)}")
        sched_of = {"nfflowd": scheduling(nf_pid), "ulogd2": scheduling(ul_pid)}
        print("scheduling: " + ", ".join(f"{k} {text}" for k, (text, _) in sched_of.items())
              + f" (nfflowd's sched_priority: {sched_priority})")

        # -- the connections ----------------------------------------------------
        procs["servers"] = srv = Proc(lab, lab.wan, sys.executable, BURST, "sink", WAN4,
                                      "--ports", *dports, "--lifetime", lifetime,
                                      lifetime=lifetime + 30)
        srv.started("the UDP listeners")
        t0 = time.monotonic()
        build_cpu0 = cpu_seconds(nf_pid)
        r = lab.ns(lab.lan, sys.executable, BURST, "udp", LAN4, WAN4, n, "--dports", *dports,
                   timeout=60 + n / 1000)
        sent = int(re.search(r"SENT (\d+)", r.stdout).group(1))
        count = lambda: int(lab.ns(lab.fw, "conntrack", "-C").stdout.strip())  # noqa
        wait_for(lambda: count() >= sent, timeout=30, interval=0.5)
        table = count()
        print(f"made {sent} connections in {time.monotonic() - t0:.1f} s; "
              f"conntrack table in fw: {table}")
        # both have taken the NEW events (nfflowd) or ignored them (ulogd2)
        time.sleep(2.0)
        build_cpu1 = cpu_seconds(nf_pid)
        if build_cpu0 is not None and build_cpu1 is not None:
            # a steady stream of NEW events (the build), not a burst
            used = sum(build_cpu1) - sum(build_cpu0)
            print(f"nfflowd CPU while the table was built: {used:.2f} s "
                  f"({1e6 * used / max(1, table):.1f} us per NEW event)")
        before = {name: read_status(Path(str(o) + ".status")).get("records", 0)
                  for name, o in outs.items()}
        drops_before = {"nfflowd": netlink_drops(lab, nf_pid),
                        "ulogd2": netlink_drops(lab, ul_pid)}
        nf_log_mark, ul_log_mark = len(nf.err), len(ulog_text())
        cpu_before = {"nfflowd": cpu_seconds(nf_pid), "ulogd2": cpu_seconds(ul_pid)}
        sched_before = {"nfflowd": sched_stats(nf_pid), "ulogd2": sched_stats(ul_pid)}
        sink_pids = {k: procs[f"sink-{k}"].child_pid() for k in ("nfflowd", "ulogd2")}
        sink_before = {k: cpu_seconds(p) for k, p in sink_pids.items()}

        # -- the flush ---------------------------------------------------------
        steal0 = steal_seconds()
        flush_ns = time.time_ns()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        lab.ns(lab.fw, "conntrack", "-F", check=False, timeout=120)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        flush_secs = (time.time_ns() - flush_ns) / 1e9
        print(f"conntrack -F took {flush_secs:.3f} s (its CPU: user "
              f"{ru1.ru_utime - ru0.ru_utime:.2f} s, system {ru1.ru_stime - ru0.ru_stime:.2f} s: "
              "the kernel deletes the entries and delivers their events in its context)")
        expect = {"nfflowd": before["nfflowd"] + 2 * table,
                  "ulogd2": before["ulogd2"] + table}
        end = time.monotonic() + drain_timeout
        last_change, last_seen = time.monotonic(), None
        while time.monotonic() < end:
            st = {k: read_status(Path(str(o) + ".status")) for k, o in outs.items()}
            # datagrams received and records counted (counted when quiet)
            now_seen = {k: (v.get("records", 0), v.get("datagrams", 0)) for k, v in st.items()}
            if now_seen != last_seen:
                last_seen, last_change = now_seen, time.monotonic()
            done = all(now_seen[k][0] >= expect[k] for k in expect)
            if time.monotonic() - last_change >= (1.5 if done else args.quiet):
                break
            time.sleep(0.1)
        else:
            print(f"drain timeout ({drain_timeout:.0f} s) reached; counting what arrived")
        steal1 = steal_seconds()
        if steal0 is not None and steal1 is not None:
            print(f"host steal time from the flush to the end of the drain: {steal1 - steal0:.2f} s "
                  "(CPU time the hypervisor gave to others while this machine wanted it)")
        drops_after = {"nfflowd": netlink_drops(lab, nf_pid),
                       "ulogd2": netlink_drops(lab, ul_pid)}
        sink_cpu = {}
        for k, pid in sink_pids.items():
            a, b = sink_before[k], cpu_seconds(pid)
            sink_cpu[k] = sum(b) - sum(a) if a is not None and b is not None else float("nan")
        cpu, sched = {}, {}
        for k, pid in (("nfflowd", nf_pid), ("ulogd2", ul_pid)):
            a, b = sched_before[k], sched_stats(pid)
            sched[k] = (tuple(y - x for x, y in zip(a, b)) if a is not None and b is not None
                        else (float("nan"), 0, 0))
            a, b = cpu_before[k], cpu_seconds(pid)
            cpu[k] = ((b[0] - a[0], b[1] - a[1]) if a is not None and b is not None
                      else (float("nan"), float("nan")))

        # -- stop everything, collect -------------------------------------------
        nf.stop(timeout=60)
        ul.stop(timeout=30)
        for name in outs:
            procs[f"sink-{name}"].stop(timeout=SINK_KILL_AFTER + 10)
        srv.stop()
        stopped = [x for x in nf.err if "event=stopped" in x]
        counters = dict(re.findall(r"(\S+)=(\S+)", stopped[-1])) if stopped else {}
        nf_flush_log = nf.err[nf_log_mark:]
        ul_all = ulog_text()
        ul_flush_log = ul_all[ul_log_mark:]
        res = {}
        for k, o in outs.items():
            if not o.exists():
                sink = procs[f"sink-{k}"]
                raise RuntimeError(
                    f"the collector for {k} wrote no results (exit {sink.p.returncode}); "
                    f"its stderr:\n{''.join(sink.err[-20:])}")
            res[k] = json.loads(o.read_text())

        # -- report --------------------------------------------------------------
        print()
        rows = {}
        for name, r_ in res.items():
            after = [(ts, c) for ts, c in r_["per_datagram"] if ts >= flush_ns]
            recs = sum(c for _, c in after)
            first = after[0][0] if after else None
            last = after[-1][0] if after else None
            span = (last - first) / 1e9 if after else float("nan")
            rows[name] = dict(records=recs, span=span,
                              to_last=(last - flush_ns) / 1e9 if after else float("nan"),
                              before=r_["records"] - recs)
        nf_r, ul_r = res["nfflowd"], res["ulogd2"]
        nf_conns = nf_r["orig_distinct"]
        ul_conns = ul_r["orig_distinct"]
        nf_over = int(counters.get("overruns", -1))
        ul_over = len([x for x in ul_all.splitlines() if LOSS_RE.search(x)])

        def kdrops(name):
            a, b = drops_before[name], drops_after[name]
            if a is None or b is None:
                return "?"
            return f"{b[0]} (build {a[0]}, flush {b[0] - a[0]})"

        print(f"{'':28s} {'nfflowd':>24s} {'ulogd2':>24s}")
        print(f"{'connections in the table':28s} {table:>24,} {table:>24,}")
        print(f"{'records after the flush':28s} {rows['nfflowd']['records']:>24,} "
              f"{rows['ulogd2']['records']:>24,}")
        print(f"{'connections exported':28s} {nf_conns:>24,} {ul_conns:>24,}")
        print(f"{'  (nfflowd: records / 2)':28s} {rows['nfflowd']['records'] / 2:>24,.1f} "
              f"{'':>24s}")
        print(f"{'duplicate records':28s} {nf_r['orig_duplicates']:>24,} "
              f"{ul_r['orig_duplicates']:>24,}")
        print(f"{'records before the flush':28s} {rows['nfflowd']['before']:>24,} "
              f"{rows['ulogd2']['before']:>24,}")
        print(f"{'overruns (own count)':28s} {nf_over:>24} {ul_over:>24}")
        print(f"{'kernel drops (netlink)':28s} {kdrops('nfflowd'):>24s} {kdrops('ulogd2'):>24s}")
        print(f"{'collector socket drops':28s} {nf_r['drops']:>24} {ul_r['drops']:>24}")
        print(f"{'first to last record (s)':28s} {rows['nfflowd']['span']:>24.3f} "
              f"{rows['ulogd2']['span']:>24.3f}")
        print(f"{'flush start to last (s)':28s} {rows['nfflowd']['to_last']:>24.3f} "
              f"{rows['ulogd2']['to_last']:>24.3f}")
        print(f"{'scheduling':28s} {sched_of['nfflowd'][0]:>24s} {sched_of['ulogd2'][0]:>24s}")
        print(f"{'CPU s from flush to quiet':28s} {sum(cpu['nfflowd']):>24.2f} "
              f"{sum(cpu['ulogd2']):>24.2f}")
        print(f"{'  of which user / system':28s} "
              + "".join(f"{cpu[k][0]:>15.2f} / {cpu[k][1]:>6.2f}" for k in ("nfflowd", "ulogd2")))
        print(f"{'  waiting for a CPU (s)':28s} {sched['nfflowd'][0]:>24.2f} "
              f"{sched['ulogd2'][0]:>24.2f}")
        print(f"{'  switches (sleeps / preempted)':28s} "
              + "".join(f"{sched[k][1]:>15,} / {sched[k][2]:>6,}" for k in ("nfflowd", "ulogd2")))
        print(f"{'  its collector CPU s':28s} {sink_cpu['nfflowd']:>24.2f} "
              f"{sink_cpu['ulogd2']:>24.2f}")
        gaps = {}
        for name, r_ in res.items():
            ts = [t for t, _ in r_["per_datagram"] if t >= flush_ns]
            gaps[name] = max((b - a for a, b in zip(ts, ts[1:])), default=0) / 1e9
        print(f"{'longest pause between records':28s} {gaps['nfflowd']:>24.3f} "
              f"{gaps['ulogd2']:>24.3f}")
        if args.timeline:
            # records received per interval after the flush started: who fell
            # behind when (the kernel's pace is the flush's connections / its time)
            step = args.timeline
            print(f"\nrecords received per {step * 1000:.0f} ms after the flush started "
                  f"(the kernel: {table / flush_secs * step:,.0f} connections per interval "
                  f"over {flush_secs:.3f} s)")
            per = {}
            for name, r_ in res.items():
                c = Counter()
                for t, k in r_["per_datagram"]:
                    if t >= flush_ns:
                        c[int((t - flush_ns) / 1e9 / step)] += k
                per[name] = c
            last_slot = max((max(c, default=0) for c in per.values()), default=0)
            print(f"{'from s':>8s} {'nfflowd records':>16s} {'(/2)':>8s} {'ulogd2 records':>16s}")
            for i in range(last_slot + 1):
                print(f"{i * step:8.2f} {per['nfflowd'][i]:16,} {per['nfflowd'][i] // 2:8,} "
                      f"{per['ulogd2'][i]:16,}")
        ratio = (rows["nfflowd"]["span"] / rows["ulogd2"]["span"]
                 if rows["ulogd2"]["span"] > 0 else float("nan"))
        print(f"\nnfflowd drained {nf_conns:,} of {table:,} in {rows['nfflowd']['span']:.3f} s; "
              f"ulogd2 drained {ul_conns:,} of {table:,} in {rows['ulogd2']['span']:.3f} s")
        print(f"ratio nfflowd / ulogd2 (first-to-last time): {ratio:.3f}")
        # the same from the flush's start: a first record that comes late
        # (a wake-up that waited for a CPU, a first batch) shortens the span
        # above without anything reaching the collector sooner
        ratio2 = (rows["nfflowd"]["to_last"] / rows["ulogd2"]["to_last"]
                  if rows["ulogd2"]["to_last"] > 0 else float("nan"))
        print(f"ratio nfflowd / ulogd2 (flush start to last record): {ratio2:.3f}")
        keys = ("events_new", "events_destroy", "connections_exported", "overruns", "resyncs",
                "exported_by_resync", "adopted_by_resync")
        print("nfflowd counters: " + " ".join(f"{k}={counters[k]}" for k in keys
                                              if k in counters)
              + " " + " ".join(f"{k}={v}" for k, v in counters.items()
                               if k.endswith(("records", "datagrams", "records_dropped",
                                              "send_errors"))))
        print(f"nfflowd flowEndReason counts: {nf_r['reasons']}")
        for x in nf_flush_log:
            if "event=stopped" not in x and re.search(r"overrun|resync|error|warn", x, re.I):
                print("nfflowd log: " + x.rstrip()[:300])
        for x in ul_flush_log.splitlines():
            if LOSS_RE.search(x) or "ERROR" in x or "send" in x:
                print("ulogd2 log: " + x.rstrip()[:300])
        per_msg = (args.ulogd_mtu - 16 - 4) // 33      # 2.0.8's record: 33 bytes
        if 0 < table - ul_conns < per_msg:
            print(f"ulogd2: {table - ul_conns} records left in its last message, which it "
                  f"sends only once full ({per_msg} records at mtu {args.ulogd_mtu}) or "
                  "on its one-shot timer (1 s after start)")
        ok = (nf_conns == table and nf_over == 0
              and rows["nfflowd"]["span"] <= rows["ulogd2"]["span"])
        print(f"target (all {table:,}, zero overruns, time <= ulogd2's): "
              f"{'met' if ok else 'NOT met'}")
        return 0
    finally:
        clean_up(procs, lab, ct_max_saved, work, args.keep)


CT_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")


def raise_ct_max(need: int) -> int | None:
    """Raise nf_conntrack_max (global: set in the initial namespace only) to
    ``need`` if it is lower; the value to restore (clean_up), or None."""
    ct_max = int(CT_MAX.read_text())
    if ct_max >= need:
        return None
    CT_MAX.write_text(str(need))
    print(f"nf_conntrack_max raised from {ct_max} to {need} (restored at the end)")
    return ct_max


def clean_up(procs: dict, lab, ct_max_saved: int | None, work: Path, keep: bool) -> None:
    """Stop every process (the last started first), delete the namespaces,
    restore nf_conntrack_max, remove the work directory unless ``keep``."""
    for name, p in reversed(list(procs.items())):
        try:
            p.stop(timeout=20)
        except Exception as e:  # noqa: BLE001
            print(f"stopping {name}: {e}", file=sys.stderr)
    lab.teardown()
    if ct_max_saved is not None:
        CT_MAX.write_text(str(ct_max_saved))
    if keep:
        print(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
