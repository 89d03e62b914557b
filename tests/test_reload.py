"""Reloading a running daemon, as root in namespaces: a reload applies whole
or is refused whole (the old configuration keeps running), keeps the
collectors whose settings did not change (sequence numbers, TCP session,
counters), works with a relative -c path once detached; and the v9/IPFIX
templates go on their own timer on a quiet firewall.

Real parts: the kernel's conntrack (natlab), nfcapd/nfdump for v5 and v9,
libfixbuf's ipfixDump for an IPFIX/TCP stream, the daemon's own `check`,
`reload` and Prometheus endpoint."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from nfflowd.app import control
from natlab import NatLab, Nfcapd, run, skip_reason, stop, wait_for
from test_e2e_ipfix_tcp import counts, ipfix_dump, receiver
from test_e2e_nat import SyslogCatcher, in_lab
from test_lifecycle import ROOT, connections, gone, nfflowd

_reason = skip_reason() or (None if shutil.which("nfcapd") and shutil.which("ipfixDump")
                            else "needs nfcapd, nfdump and ipfixDump")
pytestmark = [pytest.mark.root, pytest.mark.skipif(_reason is not None, reason=_reason or "")]


@pytest.fixture
def lab():
    with NatLab() as lab:
        lab.start_servers(lifetime=180)
        yield lab


def counters(lab, cfg) -> dict:
    """The running daemon's counters, as `check` shows them."""
    out = nfflowd(lab, "-c", cfg, "check").stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^  (\S+) = (\d+)$", out, re.M)}


def start(lab, cfg, cwd=ROOT) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(["ip", "netns", "exec", lab.fw, sys.executable, "-m", "nfflowd.cli",
                        "-c", str(cfg), "start"], capture_output=True, text=True, timeout=90,
                       cwd=cwd, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return int(re.search(r"started \(pid (\d+)\)", r.stdout).group(1))


def stop_daemon(lab, cfg, pid) -> None:
    r = nfflowd(lab, "-c", cfg, "stop")
    if r.returncode != 0 or not wait_for(lambda: gone(pid), timeout=15):
        os.kill(pid, signal.SIGKILL)
    assert r.returncode == 0, r


def scrape(lab, port) -> dict:
    code = ("import urllib.request; print(urllib.request.urlopen("
            f"'http://127.0.0.1:{port}/metrics', timeout=5).read().decode())")
    text = lab.ns(lab.fw, sys.executable, "-c", code).stdout
    out = {}
    for line in text.splitlines():
        if line.startswith("nfflowd_") and "_total" in line.split(" ")[0]:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def sequence_failures(collector: Nfcapd) -> int:
    total = 0
    for f in sorted(p for p in collector.dir.rglob("nfcapd.*") if p.is_file()):
        r = run("nfdump", "-I", "-r", f)
        total += sum(int(n) for n in re.findall(r"^Sequence failures:\s*(\d+)", r.stdout, re.M))
    return total


def v9_records(collector: Nfcapd) -> int:
    return sum(1 for line in collector.dump("%sa|%da") if in_lab(line.split("|")[0].strip()))


# -- item 4 ------------------------------------------------------------------------

def test_reload_keeps_unchanged_collectors_their_sequences_and_counters(lab, tmp_path):
    v5 = Nfcapd(lab, tmp_path, port=20611)
    v9 = Nfcapd(lab, tmp_path, port=20612)
    tcp = receiver(lab, tmp_path / "tcp.ipfix", 24741, lifetime=150)  # takes one connection
    catcher = SyslogCatcher(tmp_path / "log.sock")
    cfg = tmp_path / "nfflowd.yaml"
    body = f"""
export:
  source: 203.0.113.1
  collectors:
    - {{host: 127.0.0.1, port: 20611, version: 5}}
    - {{host: 127.0.0.1, port: 20612, version: 9, records: [flows]}}
    - {{host: 127.0.0.1, port: 24741, version: 10, transport: tcp}}
syslog: {{enabled: true, address: {catcher.path}}}
conntrack: {{poll_interval: 1, ttl: 3600}}
metrics: {{listen: '127.0.0.1:29471'}}
pidfile: {tmp_path}/nfflowd.pid
"""
    cfg.write_text(body)
    pid = start(lab, cfg)
    v5n, v9n, tcpn = "127.0.0.1:20611/v5", "127.0.0.1:20612/v9", "127.0.0.1:24741/v10/tcp"
    try:
        connections(lab, 3)
        lab.flush()
        assert wait_for(lambda: counters(lab, cfg).get(f"{tcpn}.messages", 0) >= 1
                        and len(catcher.collect()) >= 9, timeout=20)
        before = counters(lab, cfg)
        assert before[f"{v5n}.records"] == 9 and before[f"{v9n}.records"] == 6, before
        m_before = scrape(lab, 29471)

        # a reload that changes none of these collectors (ttl, and a new one)
        cfg.write_text(body.replace("ttl: 3600", "ttl: 7200").replace(
            "    - {host: 127.0.0.1, port: 24741",
            "    - {host: 127.0.0.1, port: 20613, version: 5}\n"
            "    - {host: 127.0.0.1, port: 24741"))
        r = nfflowd(lab, "-c", cfg, "reload")
        assert r.returncode == 0 and "reloaded" in r.stdout, r
        connections(lab, 2)
        lab.flush()
        assert wait_for(lambda: counters(lab, cfg).get(f"{v5n}.records", 0) >= 15
                        and len(catcher.collect()) >= 15, timeout=20)

        # a reload that changes the v9 collector (its records): a new
        # exporter, whose counters continue the old one's
        cfg.write_text(cfg.read_text().replace("version: 9, records: [flows]",
                                               "version: 9, records: [flows, nat_events]"))
        r = nfflowd(lab, "-c", cfg, "reload")
        assert r.returncode == 0 and "reloaded" in r.stdout, r
        mid = counters(lab, cfg)
        assert mid[f"{v9n}.records"] == 10, mid
        connections(lab, 1)
        lab.flush()
        assert wait_for(lambda: counters(lab, cfg).get(f"{v5n}.records", 0) >= 18
                        and counters(lab, cfg).get(f"{v9n}.records", 0) >= 14, timeout=20)
        after = counters(lab, cfg)
        m_after = scrape(lab, 29471)
    finally:
        stop_daemon(lab, cfg, pid)
    stop(tcp)
    v5.stop()
    v9.stop()

    # counters are the daemon's life's: nothing went back
    assert after[f"{v5n}.records"] == 18 and after[f"{v5n}.datagrams"] >= 3, after
    assert after[f"{v9n}.records"] == 12 + 2, after      # 2 flows, then flows + NAT events
    assert after[f"{tcpn}.connects"] == 1, after       # the TCP session was kept
    assert after["syslog_lines"] == 18 and after["reloads"] == 2, after
    for key, value in before.items():
        if key.rsplit(".", 1)[-1] not in ("biflow_held",) and not key.startswith(
                ("connections_", "cache_")):
            assert after.get(key, 0) >= value, (key, value, after.get(key))
    for key, value in m_before.items():
        assert m_after.get(key, 0) >= value, (key, value, m_after.get(key))
    assert m_after[f'nfflowd_records_sent_total{{collector="{v5n}"}}'] == 18.0, m_after

    # the collectors: every record, no sequence failure (nfcapd counts a
    # sequence that restarts), one IPFIX stream in sequence (ipfixDump warns
    # "out of sequence" otherwise)
    assert sequence_failures(v5) == 0 and sequence_failures(v9) == 0
    assert len([x for x in v5.dump("%sa") if in_lab(x)]) == 18
    assert v9_records(v9) == 14          # NAT events are records to nfdump too
    dump, err = ipfix_dump(tmp_path / "tcp.ipfix")
    assert "warn" not in err.lower() and "sequence" not in err.lower(), err
    assert counts(dump)["data"] == 6 * 2 * 2, dump      # flows and NAT create + delete


# -- item 1 ------------------------------------------------------------------------

def test_a_reload_that_cannot_be_built_is_refused_whole(lab, tmp_path):
    v5 = Nfcapd(lab, tmp_path, port=20614)
    catcher = SyslogCatcher(tmp_path / "log.sock")
    cfg = tmp_path / "nfflowd.yaml"
    good = f"""
export:
  source: 203.0.113.1
  collectors:
    - {{host: 127.0.0.1, port: 20614, version: 5}}
syslog: {{enabled: true, address: {catcher.path}}}
conntrack: {{poll_interval: 1}}
metrics: {{listen: '127.0.0.1:29472'}}
pidfile: {tmp_path}/nfflowd.pid
"""
    cfg.write_text(good)
    pid = start(lab, cfg)
    unresolvable = good.replace(
        "    - {host: 127.0.0.1, port: 20614, version: 5}",
        "    - {host: 127.0.0.1, port: 20615, version: 9}\n"
        "    - {host: collector.invalid, port: 2055, version: 5}")
    not_local = good.replace("127.0.0.1:29472", "192.0.2.1:9469").replace(
        "port: 20614, version: 5}", "port: 20614, version: 5}\n"
        "    - {host: 127.0.0.1, port: 20616, version: 10}")
    try:
        connections(lab, 1)
        lab.flush()
        assert wait_for(lambda: len(catcher.collect()) >= 3, timeout=20)
        refused = 0
        for text, reason in ((unresolvable, "collector collector.invalid:2055: cannot resolve"),
                             (not_local, "metrics: cannot listen on 192.0.2.1:9469")):
            cfg.write_text(text)
            # check says start and reload would refuse it
            r = nfflowd(lab, "-c", cfg, "check")
            assert r.returncode == 2 and reason in r.stdout, r
            r = nfflowd(lab, "-c", cfg, "reload")
            refused += 1
            assert r.returncode == 2, r
            assert "refused the new configuration: " + reason in r.stderr, r
            assert "the old one stays in force" in r.stderr, r
            assert not gone(pid)
            c = counters(lab, cfg)
            assert c["reloads_refused"] == refused and c["reloads"] == 0, c
            # nothing of it applied: no new collector, the old metrics endpoint
            assert list(c) and not any("20615" in k or "20616" in k for k in c), c
            assert scrape(lab, 29472)["nfflowd_connections_exported_total"] == 1.0

        # the daemon itself refuses it too, on a SIGHUP
        cfg.write_text(unresolvable)
        os.kill(pid, signal.SIGHUP)
        sock = control.socket_path(str(tmp_path / "nfflowd.pid"))
        assert wait_for(lambda: control.query(sock)["counters"]["reloads_refused"] == 3,
                        timeout=10)
        assert "cannot resolve" in control.query(sock)["last_reload"]["reason"]
        assert not gone(pid)

        # the old configuration kept running all along
        cfg.write_text(good)
        connections(lab, 1)
        lab.flush()
        assert wait_for(lambda: counters(lab, cfg).get("127.0.0.1:20614/v5.records") == 6,
                        timeout=20)
        assert not gone(pid)
    finally:
        stop_daemon(lab, cfg, pid)
    v5.stop()
    assert len([x for x in v5.dump("%sa") if in_lab(x)]) == 6


# -- item 15 -----------------------------------------------------------------------

def test_reload_of_a_detached_daemon_started_with_a_relative_path(lab, tmp_path):
    a = Nfcapd(lab, tmp_path, port=20617)
    b = Nfcapd(lab, tmp_path, port=20618)
    catcher = SyslogCatcher(tmp_path / "log.sock")
    cfg = tmp_path / "rel.yaml"
    cfg.write_text(f"""
export:
  source: 203.0.113.1
  collectors:
    - {{host: 127.0.0.1, port: 20617, version: 5}}
syslog: {{enabled: true, address: {catcher.path}}}
conntrack: {{poll_interval: 1}}
pidfile: {tmp_path}/nfflowd.pid
""")
    pid = start(lab, "rel.yaml", cwd=tmp_path)      # -c rel.yaml, from its directory
    try:
        connections(lab, 1)
        lab.flush()
        assert wait_for(lambda: len(catcher.collect()) >= 3, timeout=20)
        cfg.write_text(cfg.read_text().replace("port: 20617", "port: 20618"))
        r = nfflowd(lab, "-c", cfg, "reload")
        assert r.returncode == 0 and "reloaded" in r.stdout, r
        r = nfflowd(lab, "-c", cfg, "check")
        assert f"config {cfg}" in r.stdout, r.stdout
        connections(lab, 1)
        lab.flush()
        assert wait_for(lambda: len(catcher.collect()) >= 6, timeout=20)
    finally:
        stop_daemon(lab, cfg, pid)
    a.stop()
    b.stop()
    assert len([x for x in a.dump("%sa") if in_lab(x)]) == 3
    assert len([x for x in b.dump("%sa") if in_lab(x)]) == 3


def test_user_and_a_v9_collector_start_and_reload(lab, tmp_path):
    """The max_datagram check loads the v9/IPFIX encoders (and numpy's
    threads) while the config is read: with user:, the daemon's signals are
    blocked before that, or it would refuse to start (#15 item 10)."""
    from test_e2e_nat import start_nfflowd
    v9 = Nfcapd(lab, tmp_path, port=20619)
    confdir = Path(tempfile.mkdtemp(prefix="nfflowd-test-"))   # readable by nobody
    os.chmod(confdir, 0o755)
    cfg = confdir / "nfflowd.yaml"
    cfg.write_text(f"""
export:
  collectors:
    - {{host: 127.0.0.1, port: 20619, version: 9}}
syslog: {{enabled: false}}
conntrack: {{poll_interval: 1}}
pidfile: {tmp_path}/nfflowd.pid
user: nobody
""")
    daemon, log = start_nfflowd(lab, cfg)
    try:
        connections(lab, 1)
        lab.flush()
        assert wait_for(lambda: counters(lab, cfg).get("127.0.0.1:20619/v9.records", 0) >= 4,
                        timeout=20)
        cfg.write_text(cfg.read_text().replace("poll_interval: 1", "poll_interval: 2"))
        r = nfflowd(lab, "-c", cfg, "reload")
        assert r.returncode == 0 and "reloaded" in r.stdout, (r, "".join(log))
    finally:
        stop(daemon)
        shutil.rmtree(confdir, ignore_errors=True)
    daemon.log_reader.join(5)
    assert daemon.returncode == 0, "".join(log)
    v9.stop()
    assert sequence_failures(v9) == 0
