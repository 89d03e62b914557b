"""Steady churn: connections begun and ended at a steady rate for minutes.
Does nfflowd export every one, does its memory stay flat, and what CPU does
it take per connection beside ulogd2?

    sudo python bench/bench_churn.py [--rate R] [--seconds T] [--udp-timeout S]

As root, in network namespaces (tests/natlab.py: lan -> fw (NAT) -> wan):

1. in fw, two IPFIX collectors (bench_burst.py's ``sink``: it keeps every
   datagram and decodes them at the end), Debian's ulogd2 as bench_burst.py
   runs it (``start_ulogd``: NFCT input, DESTROY events only, IPFIX over UDP
   to its own collector; it makes itself SCHED_RR 99) and nfflowd (IPFIX over
   UDP, flow records only, the normal scheduler: a steady load needs no
   real-time priority; ``--sched-priority`` to change that); ``--no-ulogd2``
   leaves ulogd2 out, ``--destroy-only`` runs nfflowd with
   ``conntrack.new_events: false`` (DESTROY events only, as ulogd2 here);
2. from lan, R UDP connections per second for T seconds (tests/burst.py
   ``churn``), each one datagram from a new source and destination port
   pair; fw's nf_conntrack_udp_timeout is S, so each connection ends S
   seconds after it began (plus the kernel's garbage-collection delay): once
   the first have timed out, NEW and DESTROY events both come at about R per
   second, and the table holds about R * S connections;
3. every ``--sample`` seconds: nfflowd's resident memory (VmRSS), its CPU
   and ulogd2's,
   the conntrack table's size and the datagrams the collector has received;
4. once the sender is done, a bounded wait until the table is empty and the
   collector quiet.

Prints the samples, then: connections sent, connections exported (distinct
original-direction records at the collector), records (nfflowd sends one per
direction: 2 per connection), duplicates, overruns (nfflowd's own count) and
the kernel's drops on nfflowd's netlink socket; nfflowd's resident memory
once the table has reached its steady size, at the end of the churn, and the
peak; the connections ulogd2 exported; the CPU per connection sent of
nfflowd and of ulogd2, and their ratio nfflowd / ulogd2, over the churn (from
the first connection to the sender's end: every NEW event, the DESTROY
events of all but the last S seconds' connections) and to the end (every
event, and the quiet wait).  Targets: every connection exported once, zero
overruns, memory not growing with the connections seen (issue 5's "lose
nothing", over time); nfflowd's CPU per connection no more than ulogd2's
(issue 16).

``--syslog`` turns the syslog mirror on (a CSV line per flow-tools record,
3 per translated connection, over UDP to a line counter in fw) and checks
that every line arrived.

Every wait is bounded; every process started here has a lifetime of its own
(``timeout``) and is stopped in ``finally``; the namespaces are deleted; a
raised nf_conntrack_max (global, initial namespace) is restored.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_burst as bb  # noqa: E402  (its collector, processes and /proc readers)

PORT = bb.NFFLOWD_PORT
SYSLOG_PORT = PORT + 10


def syslog_sink_main(argv) -> int:
    """Count the syslog datagrams (one CSV line each) on a UDP port until
    SIGTERM or the lifetime; rewrite OUT (JSON: lines, drops) every 0.2 s
    and at the end.  ``bench_churn.py syslog-sink ADDR PORT OUT``."""
    ap = argparse.ArgumentParser(prog="bench_churn.py syslog-sink")
    ap.add_argument("addr"), ap.add_argument("port", type=int), ap.add_argument("out")
    ap.add_argument("--lifetime", type=float, default=600)
    a = ap.parse_args(argv)
    s = bb.collector_socket(a.addr, a.port, 64 << 20)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    lines = drops = 0
    print("READY", flush=True)
    end = time.monotonic() + a.lifetime
    next_status = 0.0
    while not stop and time.monotonic() < end:
        time.sleep(bb.SINK_DRAIN)
        for _ in range(bb.SINK_DRAIN_MAX):
            try:
                _d, anc, _f, _a = s.recvmsg(4096, socket.CMSG_SPACE(4))
            except (BlockingIOError, InterruptedError):
                break
            lines += 1
            for level, typ, data in anc:
                if level == socket.SOL_SOCKET and typ == bb.SO_RXQ_OVFL and len(data) >= 4:
                    drops = struct.unpack("I", data[:4])[0]
        if time.monotonic() >= next_status:
            bb._write_atomic(Path(a.out), json.dumps({"lines": lines, "drops": drops}))
            next_status = time.monotonic() + 0.2
    bb._write_atomic(Path(a.out), json.dumps({"lines": lines, "drops": drops}))
    return 0


def rss_kib(pid: int | None) -> int | None:
    """VmRSS of a process in KiB, None when it cannot be read."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=2000.0, metavar="R",
                    help="connections per second (default 2000)")
    ap.add_argument("--seconds", type=float, default=120.0, metavar="T",
                    help="how long connections are begun (default 120)")
    ap.add_argument("--udp-timeout", type=int, default=5, metavar="S",
                    help="fw's nf_conntrack_udp_timeout: each connection's life (default 5)")
    ap.add_argument("--sample", type=float, default=10.0,
                    help="seconds between samples (default 10)")
    ap.add_argument("--sched-priority", type=int, default=0, metavar="N",
                    help="nfflowd's sched_priority (default 0: the normal scheduler)")
    ap.add_argument("--rcvbuf", type=int, default=64 << 20,
                    help="nfflowd's conntrack.rcvbuf (default: the sample config's 64 MiB)")
    ap.add_argument("--quiet", type=float, default=5.0,
                    help="seconds without a new datagram (and an empty table) that end the wait")
    ap.add_argument("--syslog", action="store_true",
                    help="with the syslog mirror on (over UDP to a line counter in fw)")
    ap.add_argument("--profile", metavar="FILE", default=None,
                    help="run nfflowd under cProfile, statistics to FILE (slower: for "
                         "finding where the time goes, not for the figures)")
    ap.add_argument("--destroy-only", action="store_true",
                    help="nfflowd with conntrack.new_events: false (DESTROY events only, "
                         "as ulogd2 here)")
    ap.add_argument("--no-ulogd2", dest="ulogd2", action="store_false",
                    help="without ulogd2 beside nfflowd")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    if len(sys.argv) > 1 and sys.argv[1] == "syslog-sink":
        return syslog_sink_main(sys.argv[2:])
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, nftables, conntrack)")
    for tool in ("ip", "nft", "conntrack", "timeout") + (("ulogd", "dpkg") if args.ulogd2 else ()):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs the '{tool}' command")
    plugins = bb.ulogd_plugins() if args.ulogd2 else None
    if args.rate <= 0 or args.seconds <= 0 or args.udp_timeout < 1 or args.sample <= 0:
        raise SystemExit("--rate, --seconds, --sample must be > 0 and --udp-timeout >= 1")
    n = int(args.rate * args.seconds)
    dports = list(range(9000, 9000 + max(1, math.ceil(n / 50_000))))
    lifetime = args.seconds + 300 + n / 2000          # every child's own bound
    from natlab import LAN4, WAN4, NatLab  # noqa: E402

    work = Path(tempfile.mkdtemp(prefix="bench_churn."))
    lab = NatLab(tag=f"c{os.getpid() % 100000}")
    procs: dict[str, bb.Proc] = {}
    ct_max_saved = None
    try:
        # the table holds about rate * (timeout + gc delay)
        ct_max_saved = bb.raise_ct_max(int(args.rate * (args.udp_timeout + 60)) + 1000)
        lab.setup()
        lab.ns(lab.fw, "sysctl", "-qw", f"net.netfilter.nf_conntrack_udp_timeout={args.udp_timeout}")
        lab.ns(lab.fw, "sysctl", "-qw",
               f"net.netfilter.nf_conntrack_udp_timeout_stream={args.udp_timeout}")
        print(f"churn: {args.rate:g} connections/s for {args.seconds:g} s ({n} connections), "
              f"each {args.udp_timeout} s long; cpus: {os.cpu_count()}; work dir: {work}")

        out = work / "sink.json"
        procs["sink"] = sink = bb.Proc(
            lab, lab.fw, sys.executable, HERE / "bench_burst.py", "sink", "127.0.0.1", PORT,
            out, "--lifetime", lifetime, "--lan", LAN4, lifetime=lifetime + 30,
            kill_after=bb.SINK_KILL_AFTER)
        sink.started("the collector")
        ul_out = work / "sink-ulogd2.json"
        ul_pid = None
        if args.ulogd2:
            procs["sink-ulogd2"] = bb.Proc(
                lab, lab.fw, sys.executable, HERE / "bench_burst.py", "sink", "127.0.0.1",
                bb.ULOGD_PORT, ul_out, "--lifetime", lifetime, "--lan", LAN4,
                lifetime=lifetime + 30, kill_after=bb.SINK_KILL_AFTER)
            procs["sink-ulogd2"].started("the collector for ulogd2")
            ul, _ulog_text = bb.start_ulogd(lab, work, procs, plugins, bb.ULOGD_PORT, lifetime)
            ul_pid = ul.child_pid()
        lines_out = work / "syslog.json"
        if args.syslog:
            procs["syslog-sink"] = ls = bb.Proc(
                lab, lab.fw, sys.executable, Path(__file__).resolve(), "syslog-sink",
                "127.0.0.1", SYSLOG_PORT, lines_out, "--lifetime", lifetime,
                lifetime=lifetime + 30)
            ls.started("the syslog counter")
        cfg = work / "nfflowd.yaml"
        bb.nfflowd_config(cfg, work, PORT, args.rcvbuf, None, args.sched_priority,
                          syslog=f"127.0.0.1:{SYSLOG_PORT}" if args.syslog else None,
                          new_events=not args.destroy_only)
        prof = ["-m", "cProfile", "-o", str(Path(args.profile).resolve())] if args.profile else []
        procs["nfflowd"] = nf = bb.Proc(lab, lab.fw, sys.executable, *prof, "-m", "nfflowd.cli",
                                        "-f", "-c", cfg, "start", lifetime=lifetime,
                                        cwd=bb.ROOT)
        nf.started("nfflowd", "event=ready", timeout=30, stream="err")
        nf_pid = nf.child_pid()
        print(f"pids: nfflowd {nf_pid}, ulogd2 {ul_pid} ({bb.scheduling(ul_pid)[0]})")
        procs["servers"] = srv = bb.Proc(lab, lab.wan, sys.executable, bb.BURST, "sink", WAN4,
                                         "--ports", *dports, "--lifetime", lifetime,
                                         lifetime=lifetime + 30)
        srv.started("the UDP listeners")

        def count() -> int:
            r = lab.ns(lab.fw, "conntrack", "-C", check=False)
            return int(r.stdout.strip()) if r.stdout.strip().isdigit() else -1

        status = Path(str(out) + ".status")
        samples = []
        cpu0 = bb.cpu_seconds(nf_pid)
        sched0 = bb.sched_stats(nf_pid)
        ul_cpu0 = bb.cpu_seconds(ul_pid)
        t0 = time.monotonic()

        def used(pid, before):
            c = bb.cpu_seconds(pid)
            return sum(c) - sum(before) if c and before else float("nan")

        def sample():
            samples.append(dict(t=time.monotonic() - t0, rss=rss_kib(nf_pid), table=count(),
                                cpu=used(nf_pid, cpu0), ul_cpu=used(ul_pid, ul_cpu0),
                                datagrams=bb.read_status(status).get("datagrams", 0)))

        # -- the churn: the sender runs while this samples -----------------------
        procs["sender"] = snd = bb.Proc(lab, lab.lan, sys.executable, bb.BURST, "churn", LAN4,
                                        WAN4, args.rate, args.seconds, "--dports", *dports,
                                        lifetime=args.seconds * 2 + 60)
        sample()
        next_sample = t0 + args.sample
        while snd.p.poll() is None and time.monotonic() < t0 + args.seconds * 2 + 60:
            time.sleep(min(0.2, max(0.0, next_sample - time.monotonic())))
            if time.monotonic() >= next_sample:
                sample()
                next_sample += args.sample
        churn_end = time.monotonic()
        sample()
        churn_cpu, ul_churn_cpu = samples[-1]["cpu"], samples[-1]["ul_cpu"]
        sched1 = bb.sched_stats(nf_pid)
        snd.stop()                  # (it has ended: this reads the rest of its output)
        m = re.search(r"SENT (\d+) LATE ([\d.]+)", "".join(snd.out))
        if not m:
            raise RuntimeError(f"the sender did not finish: {''.join(snd.err)}")
        sent, late = int(m.group(1)), float(m.group(2))

        # -- the end: every connection times out, the collector goes quiet -------
        end = time.monotonic() + args.udp_timeout + 180
        last_seen, last_change = None, time.monotonic()
        while time.monotonic() < end:
            seen = (count(), bb.read_status(status).get("datagrams", 0))
            if seen != last_seen:
                last_seen, last_change = seen, time.monotonic()
            if seen[0] == 0 and time.monotonic() - last_change >= args.quiet:
                break
            time.sleep(0.5)
        else:
            print("wait timeout: counting what arrived")
        sample()
        total_cpu, ul_total_cpu = samples[-1]["cpu"], samples[-1]["ul_cpu"]
        drops = bb.netlink_drops(lab, nf_pid)
        nf.stop(timeout=60)
        sink.stop(timeout=bb.SINK_KILL_AFTER + 10)
        ul_res = None
        if args.ulogd2:
            procs["ulogd2"].stop(timeout=30)
            procs["sink-ulogd2"].stop(timeout=bb.SINK_KILL_AFTER + 10)
            if ul_out.exists():
                ul_res = json.loads(ul_out.read_text())
        srv.stop()
        if args.syslog:
            procs["syslog-sink"].stop()
        stopped = [x for x in nf.err if "event=stopped" in x]
        counters = dict(re.findall(r"(\S+)=(\S+)", stopped[-1])) if stopped else {}
        if not out.exists():
            raise RuntimeError(f"the collector wrote no results (exit {sink.p.returncode}); "
                               f"its stderr:\n{''.join(sink.err[-20:])}")
        res = json.loads(out.read_text())

        # -- report ----------------------------------------------------------------
        print()
        print(f"{'t (s)':>8s} {'table':>8s} {'datagrams':>10s} {'nfflowd CPU s':>14s} "
              f"{'RSS MiB':>8s} {'ulogd2 CPU s':>13s}")
        for s in samples:
            rss = f"{s['rss'] / 1024:8.1f}" if s["rss"] is not None else f"{'?':>8s}"
            print(f"{s['t']:8.1f} {s['table']:8d} {s['datagrams']:10d} {s['cpu']:14.2f} {rss} "
                  f"{s['ul_cpu']:13.2f}")
        print()
        # steady: the first sample at least two connection lives into the churn
        steady = next((s for s in samples if s["t"] >= 2 * args.udp_timeout + 30
                       and s["t"] <= churn_end - t0), None)
        during = [s["rss"] for s in samples if s["rss"] is not None]
        print(f"connections sent                 {sent:,} (sender ended {late:.3f} s behind "
              "its pace)")
        print(f"connections exported             {res['orig_distinct']:,}")
        print(f"records                          {res['records']:,} (2 per connection: "
              f"{2 * sent:,})")
        print(f"duplicate records                {res['orig_duplicates']:,}")
        print(f"flowEndReason counts             {res['reasons']}")
        print(f"overruns (own count)             {counters.get('overruns', '?')}")
        print(f"kernel drops (netlink)           {drops[0] if drops else '?'}")
        print(f"collector socket drops           {res['drops']}")
        print(f"nfflowd CPU during the churn     {churn_cpu:.2f} s "
              f"({1e6 * churn_cpu / max(1, sent):.1f} us per connection, "
              f"{'its DESTROY' if args.destroy_only else 'NEW and DESTROY'})")
        if sched0 is not None and sched1 is not None:
            # each sleep (select, a pacing wait's slice) ends in a wake-up
            print(f"nfflowd wake-ups in the churn    {sched1[1] - sched0[1]:,} "
                  f"({(sched1[1] - sched0[1]) / max(1e-9, churn_end - t0):.0f} a second; "
                  f"preempted {sched1[2] - sched0[2]:,})")
        if ul_res is not None:
            print(f"ulogd2: connections exported     {ul_res['orig_distinct']:,} "
                  f"(duplicates {ul_res['orig_duplicates']:,}, collector socket drops "
                  f"{ul_res['drops']})")
        print()
        print(f"{'CPU us per connection sent':30s} {'nfflowd':>9s} {'ulogd2':>9s} {'ratio':>7s}")
        for what, nf_s, ul_s in (("during the churn", churn_cpu, ul_churn_cpu),
                                 ("to the end", total_cpu, ul_total_cpu)):
            a, b = 1e6 * nf_s / max(1, sent), 1e6 * ul_s / max(1, sent)
            print(f"{what:30s} {a:9.1f} {b:9.1f} {a / b if b > 0 else float('nan'):7.2f}")
        print()
        if steady is not None and steady["rss"] is not None and samples[-2]["rss"] is not None:
            print(f"nfflowd RSS                      {steady['rss'] / 1024:.1f} MiB at "
                  f"{steady['t']:.0f} s (table {steady['table']:,}), "
                  f"{samples[-2]['rss'] / 1024:.1f} MiB at the churn's end "
                  f"({samples[-2]['t']:.0f} s), peak {max(during) / 1024:.1f} MiB")
        else:
            print("nfflowd RSS: the churn was too short for a steady sample "
                  f"(needs more than {2 * args.udp_timeout + 30} s)")
        ok = (res["orig_distinct"] == sent and res["records"] == 2 * sent
              and res["orig_duplicates"] == 0 and counters.get("overruns") == "0")
        if args.syslog:
            got = bb.read_status(lines_out)
            # a translated connection's flow-tools records: the original
            # direction before and after the NAT, and the reply
            print(f"syslog lines                     {got.get('lines', '?'):,} received "
                  f"(3 per connection: {3 * sent:,}); nfflowd: "
                  f"{counters.get('syslog_lines', '?')} sent, "
                  f"{counters.get('syslog_dropped', '?')} dropped; the counter's socket "
                  f"dropped {got.get('drops', '?')}")
            ok = ok and got.get("lines") == 3 * sent
        print(f"target (every connection exported once, zero overruns): "
              f"{'met' if ok else 'NOT met'}")
        if args.ulogd2:
            print(f"target (nfflowd's CPU per connection during the churn <= ulogd2's): "
                  f"{'met' if churn_cpu <= ul_churn_cpu else 'NOT met'}")
        return 0 if ok else 1
    finally:
        bb.clean_up(procs, lab, ct_max_saved, work, args.keep)


if __name__ == "__main__":
    sys.exit(main())
