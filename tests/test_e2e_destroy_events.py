"""DESTROY events only (conntrack.new_events: false), on a real NAT.

nfflowd runs in fw (kernel timestamps on: natlab.py) exporting IPFIX to
tests/ipfix_sink.py.  Without NAT events it subscribes to the DESTROY group
alone, and its records still carry each connection's start (the kernel's
timestamp in the DESTROY event); with NAT events asked for, or asked for by
a reload, it takes NEW events too and every connection gets its create
event.  The groups held are read from fw's /proc/net/netlink.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time

import pytest

from natlab import LAN4, NatLab, skip_reason, stop, wait_for
from test_e2e_burst import SINK, burst, count_table, final_counters, records
from test_e2e_nat import start_nfflowd
from test_e2e_nat_events_overrun import NAT44_CREATE, NAT44_DELETE, nat_lines

_reason = skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

N = 200
NEW_BIT, DESTROY_BIT = 1 << 0, 1 << 2       # NFNLGRP_CONNTRACK_NEW, _DESTROY


@pytest.fixture
def lab():
    with NatLab() as lab:
        lab.ns(lab.fw, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600")
        yield lab


def write_config(tmp_path, port, records_=("flows",)):
    cfg = tmp_path / "nfflowd.yaml"
    cfg.write_text(f"""
export:
  collectors:
    - {{host: 127.0.0.1, port: {port}, version: 10, records: [{", ".join(records_)}]}}
syslog: {{enabled: false}}
conntrack: {{poll_interval: 1, new_events: false}}
pidfile: {tmp_path}/nfflowd.pid
""")
    return cfg


def event_groups(lab, pid: int) -> int:
    """The ctnetlink groups (bit mask) of the subscription process ``pid``
    holds, from fw's /proc/net/netlink."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        m = re.match(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
        if m:
            inodes.add(m.group(1))
    masks = []
    for line in lab.ns(lab.fw, "cat", "/proc/net/netlink").stdout.splitlines()[1:]:
        f = line.split()
        # sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
        if f[1] == "12" and int(f[3], 16) and f[9] in inodes:
            masks.append(int(f[3], 16))
    assert len(masks) == 1, masks
    return masks[0]


def start(lab, tmp_path, port, records_=("flows",)):
    out, nat_out = tmp_path / "records.txt", tmp_path / "nat.txt"
    sink = lab.spawn(lab.fw, sys.executable, SINK, "127.0.0.1", port, out, "--lifetime", 120,
                     "--nat", nat_out)
    assert "READY" in sink.stdout.readline()
    cfg = write_config(tmp_path, port, records_)
    daemon, log = start_nfflowd(lab, cfg)
    return sink, out, nat_out, cfg, daemon, log


def test_destroy_events_only_and_records_keep_their_start(lab, tmp_path):
    sink, out, _nat, _cfg, daemon, log = start(lab, tmp_path, 24760)
    try:
        assert event_groups(lab, daemon.pid) == DESTROY_BIT
        assert any("event=conntrack_events" in x and "subscribed=destroy" in x for x in log)
        t0 = time.time()
        sent = burst(lab, N)
        t1 = time.time()
        assert wait_for(lambda: count_table(lab) >= sent, timeout=20)
        time.sleep(2)
        t_flush = time.time()
        lab.flush()
        assert wait_for(lambda: len(records(out)) >= 2 * N, timeout=20)
        time.sleep(0.5)
    finally:
        counters, _text = final_counters(daemon, log)
        stop(sink)
    assert sent == N
    assert int(counters["events_new"]) == 0, counters
    assert int(counters["events_destroy"]) == N, counters
    assert int(counters["connections_exported"]) == N, counters
    assert int(counters["overruns"]) == 0, counters
    rows = records(out)
    assert len(rows) == 2 * N
    orig = [r for r in rows if r[2] == LAN4]
    assert len({r[3] for r in orig}) == N
    for r in rows:
        start_ms, end_ms = r[8], r[9]
        # the kernel's start, made between t0 and t1, not the DESTROY's time
        assert 1000 * t0 - 1000 <= start_ms <= 1000 * t1 + 1000, (r, t0, t1)
        assert end_ms >= 1000 * t_flush - 1000 and end_ms - start_ms >= 1500, (r, t_flush)


def test_nat_events_still_get_new_events(lab, tmp_path):
    sink, out, nat_out, cfg, daemon, log = start(lab, tmp_path, 24761,
                                                 ("flows", "nat_events"))
    try:
        assert event_groups(lab, daemon.pid) == NEW_BIT | DESTROY_BIT
        sent = burst(lab, N)
        assert wait_for(lambda: count_table(lab) >= sent, timeout=20)
        lab.flush()
        assert wait_for(lambda: len(records(out)) >= 2 * N
                        and len(nat_lines(nat_out)) >= 2 * N, timeout=20)
        time.sleep(0.5)
    finally:
        counters, _text = final_counters(daemon, log)
        stop(sink)
    assert int(counters["events_new"]) == N, counters
    assert int(counters["nat_creates_late"]) == 0, counters
    events = [e for e in nat_lines(nat_out) if e[2] == LAN4]
    assert sum(e[0] == NAT44_CREATE for e in events) == N
    assert sum(e[0] == NAT44_DELETE for e in events) == N


def test_a_reload_asking_for_nat_events_subscribes_to_new_events(lab, tmp_path):
    sink, _out, _nat, cfg, daemon, log = start(lab, tmp_path, 24762)
    try:
        assert event_groups(lab, daemon.pid) == DESTROY_BIT
        for records_, mask in ((("flows", "nat_events"), NEW_BIT | DESTROY_BIT),
                               (("flows",), DESTROY_BIT)):
            write_config(tmp_path, 24762, records_)
            done = sum("event=reloaded" in x for x in log) + 1
            os.kill(daemon.pid, signal.SIGHUP)
            assert wait_for(lambda: sum("event=reloaded" in x for x in log) >= done,
                            timeout=10), "".join(log)[-2000:]
            assert event_groups(lab, daemon.pid) == mask, records_
    finally:
        final_counters(daemon, log)
        stop(sink)
