"""Bursts, overruns and long connections on a real NAT (issue 5).

nfflowd runs in fw exporting IPFIX to a small collector there
(tests/ipfix_sink.py, one line per record); UDP "connections" are made in
bulk from lan (tests/burst.py) to listeners in wan, then ended at once with
``conntrack -F``.
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from natlab import LAN4, WAN4, NatLab, skip_reason, stop, wait_for
from test_e2e_nat import start_nfflowd

HERE = Path(__file__).resolve().parent
BURST = HERE / "burst.py"
SINK = HERE / "ipfix_sink.py"
_reason = skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_reason is not None, reason=_reason or "")]


@pytest.fixture
def lab():
    with NatLab() as lab:
        lab.ns(lab.fw, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600")
        yield lab


def write_config(tmp_path, port, **conntrack):
    ct = {"poll_interval": 1, **conntrack}
    cfg = tmp_path / "nfflowd.yaml"
    cfg.write_text(f"""
export:
  collectors:
    - {{host: 127.0.0.1, port: {port}, version: 10, records: [flows]}}
syslog: {{enabled: false}}
conntrack: {ct!r}
pidfile: {tmp_path}/nfflowd.pid
""".replace("'", ""))
    return cfg


def start_sink(lab, tmp_path, port):
    out = tmp_path / f"records-{port}.txt"
    p = lab.spawn(lab.fw, sys.executable, SINK, "127.0.0.1", port, out, "--lifetime", 300)
    assert "READY" in p.stdout.readline()
    return p, out


def records(out: Path) -> list[tuple]:
    rows = []
    for line in out.read_text().splitlines():
        f = line.split()
        if len(f) == 10:
            rows.append((int(f[0]), int(f[1]), f[2], int(f[3]), f[4], int(f[5]),
                         int(f[6]), int(f[7]), int(f[8]), int(f[9])))
    return rows


def burst(lab, n, dports=(9000,)):
    sink = lab.spawn(lab.wan, sys.executable, BURST, "sink", WAN4, "--ports", *dports,
                     "--lifetime", 300)
    assert "READY" in sink.stdout.readline()
    r = lab.ns(lab.lan, sys.executable, BURST, "udp", LAN4, WAN4, n, "--dports", *dports,
               timeout=120)
    return int(re.search(r"SENT (\d+)", r.stdout).group(1))


def count_table(lab) -> int:
    r = lab.ns(lab.fw, "conntrack", "-C")
    return int(r.stdout.strip())


def final_counters(daemon, log) -> dict:
    stop(daemon, timeout=60)
    daemon.log_reader.join(5)
    text = "".join(log)
    assert daemon.returncode == 0, text[-3000:]
    line = [x for x in log if "event=stopped" in x][-1]
    return {k: v for k, v in re.findall(r"(\S+)=(\S+)", line)}, text


def test_burst_of_20k_ended_at_once(lab, tmp_path):
    sink, out = start_sink(lab, tmp_path, 24739)
    daemon, log = start_nfflowd(lab, write_config(tmp_path, 24739))
    try:
        sent = burst(lab, 20000)
        assert wait_for(lambda: count_table(lab) >= sent, timeout=20)
        made = count_table(lab)
        assert made == sent == 20000
        lab.flush()
        assert wait_for(lambda: len(records(out)) >= 2 * made, timeout=60)
        time.sleep(0.5)
    finally:
        counters, text = final_counters(daemon, log)
        stop(sink)
    rows = records(out)
    assert_each_exported_once(counters, rows, made)
    assert {r[0] for r in rows} == {3}                   # end of flow


def assert_each_exported_once(counters, rows, n):
    """``n`` one-datagram connections from lan: received equals exported,
    exported equals arrived, once each."""
    assert int(counters["events_new"]) == n, counters
    assert int(counters["events_destroy"]) == n, counters
    assert int(counters["connections_exported"]) == n, counters
    assert int(counters["overruns"]) == 0, counters
    # the cache entries of ended connections were removed once netlink was idle
    assert int(counters["cache_removals_pending"]) == 0, counters
    assert len(rows) == 2 * n
    orig = [r for r in rows if r[2] == LAN4]
    assert len(orig) == n and len({r[3] for r in orig}) == n
    assert sum(r[6] for r in orig) == n                  # one datagram each


def test_overrun_is_recovered_by_resync(lab, tmp_path):
    sink, out = start_sink(lab, tmp_path, 24740)
    daemon, log = start_nfflowd(lab, write_config(tmp_path, 24740, rcvbuf=65536))
    try:
        sent = burst(lab, 20000)
        assert wait_for(lambda: count_table(lab) >= sent, timeout=20)
        made = count_table(lab)
        time.sleep(1.5)                 # a resync of the NEW burst, if it overran
        lab.flush()
        # every connection exported: by its DESTROY, or by the resync when
        # its DESTROY was lost (a redelivered one is then a duplicate)
        wait_for(lambda: len(records(out)) >= 2 * made, timeout=60)
        time.sleep(2)
    finally:
        counters, text = final_counters(daemon, log)
        stop(sink)
    rows = records(out)
    assert int(counters["overruns"]) >= 1, counters
    assert int(counters["resyncs"]) >= 1, counters
    assert text.count("event=netlink_overrun") <= int(counters["resyncs"]) + 1
    resynced = int(counters["exported_by_resync"])
    assert resynced >= 1, counters
    assert int(counters["connections_exported"]) == made, counters
    assert len(rows) == 2 * made
    orig = [r for r in rows if r[2] == LAN4]
    assert len({r[3] for r in orig}) == made             # each connection once
    by_reason = Counter(r[0] for r in orig)
    assert by_reason[5] == resynced, (by_reason, counters)   # lack of resources
    assert by_reason[3] == made - resynced


def test_active_timeout_splits_a_long_connection(lab, tmp_path):
    sink, out = start_sink(lab, tmp_path, 24741)
    servers = lab.start_servers(lifetime=60)
    daemon, log = start_nfflowd(lab, write_config(tmp_path, 24741, active_timeout=2))
    try:
        r = lab.ns(lab.lan, sys.executable, BURST, "chatter", WAN4, 8080, 7.5, timeout=30)
        lport = int(re.search(r"LOCAL \S+ (\d+)", r.stdout).group(1))
        entry = next(e for e in lab.conntrack_list() if e.orig.get("sport") == lport)
        lab.flush()
        mine = lambda: [x for x in records(out) if (x[2], x[3]) == (LAN4, lport)]  # noqa
        assert wait_for(lambda: any(x[0] == 3 for x in mine()), timeout=20)
    finally:
        counters, text = final_counters(daemon, log)
        stop(sink)
        stop(servers)
    orig = mine()
    # the reply direction as conntrack sees it: to the masqueraded port
    reply = [x for x in records(out)
             if (x[2], x[3], x[5]) == (WAN4, 8080, entry.reply["dport"])]
    assert len(orig) >= 4, orig        # 3 periods or more, then the rest
    assert Counter(x[0] for x in orig)[2] >= 3
    assert sum(x[6] for x in orig) == entry.orig["packets"]
    assert sum(x[7] for x in orig) == entry.orig["bytes"]
    assert sum(x[6] for x in reply) == entry.reply["packets"]
    assert sum(x[7] for x in reply) == entry.reply["bytes"]
    assert int(counters["active_exports"]) >= 3


def test_steady_churn_exports_every_connection_once(lab, tmp_path):
    # connections begun at a steady rate and ended by the kernel (their UDP
    # timeout): NEW and DESTROY events in the same batches, the daemon's
    # steady pacing, the kernel's garbage collector ending them in bunches
    lab.ns(lab.fw, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=2")
    sink, out = start_sink(lab, tmp_path, 24742)
    daemon, log = start_nfflowd(lab, write_config(tmp_path, 24742))
    servers = lab.spawn(lab.wan, sys.executable, BURST, "sink", WAN4, "--ports", 9000,
                        "--lifetime", 300)
    assert "READY" in servers.stdout.readline()
    try:
        r = lab.ns(lab.lan, sys.executable, BURST, "churn", LAN4, WAN4, 2000, 8,
                   "--dports", 9000, timeout=120)
        sent = int(re.search(r"SENT (\d+)", r.stdout).group(1))
        assert sent == 16000
        # every connection timed out (2 s, then the garbage collector's delay)
        assert wait_for(lambda: count_table(lab) == 0, timeout=120, interval=0.5)
        assert wait_for(lambda: len(records(out)) >= 2 * sent, timeout=30)
        time.sleep(0.5)
    finally:
        counters, text = final_counters(daemon, log)
        stop(sink)
        stop(servers)
    assert_each_exported_once(counters, records(out), sent)
