"""The administrator's daemon, as root in namespaces: start (detached), check,
reload, stop, a second start refused, a stale pidfile, a bad config, SIGTERM
in the middle of traffic, the legacy config, install --dry-run."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from natlab import PEER, WAN4, NatLab, Nfcapd, skip_reason, stop, wait_for
from test_e2e_nat import SYSLOG_RE, SyslogCatcher, in_lab, start_nfflowd

ROOT = Path(__file__).resolve().parent.parent
_reason = skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_reason is not None, reason=_reason or "")]


def nfflowd(lab, *args, timeout=60):
    """Run the nfflowd command line in fw; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(["ip", "netns", "exec", lab.fw, sys.executable, "-m", "nfflowd.cli",
                           *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def config(tmp_path, name, port, syslog_path, extra=""):
    p = tmp_path / name
    p.write_text(f"""
export:
  source: 203.0.113.1
  collectors:
    - {{host: 127.0.0.1, port: {port}, version: 5}}
syslog: {{enabled: true, address: {syslog_path}}}
conntrack: {{poll_interval: 1}}
pidfile: {tmp_path}/nfflowd.pid
{extra}
""")
    return p


def gone(pid: int) -> bool:
    """No such process, or a zombie (it has exited; whoever adopted the
    detached daemon may not have reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def v5_records(collector):
    return [line for line in collector.dump("%sa|%da|%sp|%dp|%pkt|%byt")
            if in_lab(line.split("|")[0].strip())]


def connections(lab, n, nbytes=300):
    for _ in range(n):
        lab.client("tcp", WAN4, 8080, nbytes)


def flush_and_wait(lab, catcher, total_lines):
    lab.flush()
    return wait_for(lambda: len(catcher.collect()) >= total_lines, timeout=20)


@pytest.fixture
def lab():
    with NatLab() as lab:
        lab.start_servers(lifetime=180)
        yield lab


def test_start_check_reload_stop(lab, tmp_path):
    a = Nfcapd(lab, tmp_path, port=20601)
    b = Nfcapd(lab, tmp_path, port=20602)
    catcher = SyslogCatcher(tmp_path / "log.sock")
    cfg = config(tmp_path, "nfflowd.yaml", 20601, catcher.path)
    pidfile = tmp_path / "nfflowd.pid"

    # a bad config is refused by check and by start, naming the key
    bad = config(tmp_path, "bad.yaml", 0, catcher.path)
    for cmd in ("check", "start"):
        r = nfflowd(lab, "-c", bad, cmd)
        assert r.returncode == 2, r
        assert f"{bad}: export.collectors[0].port: expected an integer from 1 to 65535" in \
            r.stdout + r.stderr

    r = nfflowd(lab, "-c", cfg, "start")
    assert r.returncode == 0, r.stderr
    pid = int(re.search(r"started \(pid (\d+)\)", r.stdout).group(1))
    assert int(pidfile.read_text()) == pid
    try:
        # a second start is refused
        r = nfflowd(lab, "-c", cfg, "start")
        assert r.returncode != 0 and f"already running (pid {pid}" in r.stderr

        # check: config, kernel (acct and timestamps on in fw), running with its pid
        r = nfflowd(lab, "-c", cfg, "check")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"daemon: running (pid {pid})" in r.stdout
        assert "connections_exported = 0" in r.stdout

        connections(lab, 3)
        assert flush_and_wait(lab, catcher, 9)

        # reload with a changed collector: later records go to the new one
        cfg.write_text(cfg.read_text().replace("port: 20601", "port: 20602"))
        r = nfflowd(lab, "-c", cfg, "reload")
        assert r.returncode == 0, r.stderr
        assert "reloaded" in r.stdout
        connections(lab, 2)
        assert flush_and_wait(lab, catcher, 15)

        # a bad config on reload is refused and the old one stays in force
        good = cfg.read_text()
        cfg.write_text(good.replace("port: 20602", "port: 99999"))
        r = nfflowd(lab, "-c", cfg, "reload")          # refused before the daemon is asked
        assert r.returncode == 2 and "export.collectors[0].port" in r.stderr
        os.kill(pid, signal.SIGHUP)                     # the daemon itself refuses it too
        wait_for(lambda: "reloads_refused = 1" in nfflowd(lab, "-c", cfg, "check").stdout,
                 timeout=10)
        # so is one that would record nowhere: no collector, the syslog mirror off
        cfg.write_text(good.replace("  collectors:\n    - {host: 127.0.0.1, port: 20602, "
                                    "version: 5}", "  collectors: []")
                       .replace("syslog: {enabled: true", "syslog: {enabled: false"))
        r = nfflowd(lab, "-c", cfg, "reload")
        assert r.returncode == 2 and "export.collectors: empty, and syslog.enabled is " \
            "false" in r.stderr, r
        os.kill(pid, signal.SIGHUP)
        same = tmp_path / "same.yaml"                   # check refuses cfg now
        same.write_text(good)
        assert wait_for(lambda: "reloads_refused = 2" in nfflowd(lab, "-c", same,
                                                                 "check").stdout, timeout=10)
        cfg.write_text(good)
        r = nfflowd(lab, "-c", cfg, "check")
        assert f"daemon: running (pid {pid})" in r.stdout
        assert "reloads_refused = 2" in r.stdout and "reloads = 1" in r.stdout
        assert "connections_exported = 5" in r.stdout
    finally:
        r = nfflowd(lab, "-c", cfg, "stop")
    assert r.returncode == 0 and f"pid {pid}" in r.stdout, r
    assert not pidfile.exists()
    assert gone(pid)
    r = nfflowd(lab, "-c", cfg, "stop")
    assert r.returncode == 0 and "not running" in r.stdout
    r = nfflowd(lab, "-c", cfg, "check")
    assert r.returncode == 3 and "daemon: not running" in r.stdout

    a.stop()
    b.stop()
    # none lost: 3 connections (9 records) before the reload at a, 2 after at b
    assert len(v5_records(a)) == 9
    assert len(v5_records(b)) == 6


def test_stale_pidfile_is_replaced_and_restart(lab, tmp_path):
    catcher = SyslogCatcher(tmp_path / "log.sock")
    cfg = config(tmp_path, "nfflowd.yaml", 20603, catcher.path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "nfflowd.pid").write_text(f"{dead.pid}\n")
    r = nfflowd(lab, "-c", cfg, "start")
    try:
        assert r.returncode == 0, r.stderr
        pid = int(re.search(r"started \(pid (\d+)\)", r.stdout).group(1))
        assert int((tmp_path / "nfflowd.pid").read_text()) == pid != dead.pid
        # restart: the old one stops, a new one runs
        r = nfflowd(lab, "-c", cfg, "restart")
        assert r.returncode == 0, r.stderr
        new_pid = int(re.search(r"started \(pid (\d+)\)", r.stdout).group(1))
        assert new_pid != pid and gone(pid)
        assert int((tmp_path / "nfflowd.pid").read_text()) == new_pid
    finally:
        assert nfflowd(lab, "-c", cfg, "stop").returncode == 0


def test_sigterm_in_the_middle_of_traffic_loses_no_record(lab, tmp_path):
    collector = Nfcapd(lab, tmp_path, port=20604)
    catcher = SyslogCatcher(tmp_path / "log.sock")
    cfg = config(tmp_path, "nfflowd.yaml", 20604, catcher.path)
    # a flusher ends connections continuously while they are made
    flusher = lab.spawn(lab.fw, "sh", "-c",
                        "for i in $(seq 200); do conntrack -F >/dev/null 2>&1; "
                        "sleep 0.02; done")
    daemon, log = start_nfflowd(lab, cfg)
    try:
        for i in range(40):
            # a flush between request and answer loses the answer (no NAT
            # state for it any more): such a client fails, which is fine here
            lab.ns(lab.lan, sys.executable, PEER, "udp", WAN4, 8080, 50, 1, "--timeout", 1,
                   check=False)
            if i == 25:
                daemon.send_signal(15)          # SIGTERM while traffic flows
    finally:
        stop(daemon)
        stop(flusher)
    daemon.log_reader.join(5)
    text = "".join(log)
    assert daemon.returncode == 0, text
    exported = int(re.search(r"connections_exported=(\d+)", text).group(1))
    records = int(re.search(r"127.0.0.1:20604/v5.records=(\d+)", text).group(1))
    assert exported > 0
    collector.stop()
    got = v5_records(collector)
    # every connection the daemon took in reached the collector (and syslog)
    lines = [m.group(3) for m in map(SYSLOG_RE.match, catcher.collect()) if m]
    assert len(got) == records == len(lines)
    assert records >= 2 * exported     # two or three records each, none dropped


def test_legacy_config_is_read(lab, tmp_path):
    legacy = tmp_path / "nfflowd.conf"
    legacy.write_text("<flow_send>\n  args 203.0.113.1\n  args 127.0.0.1\n  args 20605\n"
                      "</flow_send>\n<ct2ft>\n  ttl 3600\n</ct2ft>\n")
    r = nfflowd(lab, "-c", legacy, "check")
    assert r.returncode != 2, r.stdout + r.stderr
    assert "the original nfflowd's format" in r.stdout
    assert "port: 20605" in r.stdout and "ttl: 3600" in r.stdout
    # and nfflowd runs with it
    collector = Nfcapd(lab, tmp_path, port=20605)
    daemon, log = start_nfflowd(lab, legacy)
    try:
        connections(lab, 1)
        lab.flush()
        wait_for(lambda: "connections_exported" in "".join(log) or
                 nfflowd(lab, "-c", legacy, "check").stdout.count("connections_exported = 1"),
                 timeout=10)
    finally:
        stop(daemon)
    daemon.log_reader.join(5)
    assert daemon.returncode == 0, "".join(log)
    collector.stop()
    assert len(v5_records(collector)) == 3


INSTALL_TARGETS = ("/etc/systemd/system/nfflowd.service", "/etc/init.d/nfflowd",
                   "/etc/rsyslog.d/30-nfflowd.conf", "/etc/logrotate.d/nfflowd",
                   "/etc/nfflowd.yaml", "/var/log/nfflowd")


def test_install_dry_run_prints_the_steps_and_changes_nothing():
    before = {p: os.path.exists(p) for p in INSTALL_TARGETS}
    r = subprocess.run([sys.executable, "-m", "nfflowd.cli", "install", "--dry-run"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "would install /etc/rsyslog.d/30-nfflowd.conf" in out, out
    assert "would install /etc/logrotate.d/nfflowd" in out, out
    assert ("would install /etc/init.d/nfflowd" in out
            or "would install /etc/systemd/system/nfflowd.service" in out), out
    assert {p: os.path.exists(p) for p in INSTALL_TARGETS} == before


def proc_status(pid: int) -> dict:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def assert_dropped(pid, pidfile):
    """#15 item 10: nothing kept beyond CAP_NET_ADMIN, not even in the
    bounding set; no new privileges; no descriptor on root's pidfile."""
    st = proc_status(pid)
    assert int(st["CapPrm"], 16) == 1 << 12, st["CapPrm"]
    assert int(st["CapBnd"], 16) == 1 << 12, st["CapBnd"]
    assert st["NoNewPrivs"] == "1", st["NoNewPrivs"]
    fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert str(pidfile) not in fds, fds


def test_user_drops_root_but_keeps_cap_net_admin_for_the_poller(lab, tmp_path):
    collector = Nfcapd(lab, tmp_path, port=20606)
    # a socket nobody can reach, as /dev/log is (tmp_path's parents are 0700)
    sockdir = Path(tempfile.mkdtemp(prefix="nfflowd-test-"))
    os.chmod(sockdir, 0o755)
    catcher = SyslogCatcher(sockdir / "log.sock")
    os.chmod(catcher.path, 0o666)
    cfg = config(tmp_path, "nfflowd.yaml", 20606, catcher.path, extra="user: nobody\n")
    early = lab.client("tcp", WAN4, 8080, 400)      # before start: found by polling
    daemon, log = start_nfflowd(lab, cfg)
    try:
        st = proc_status(daemon.pid)        # `ip netns exec` execs python itself
        assert st["Uid"].split()[:2] == [str(65534)] * 2, st["Uid"]
        assert int(st["CapEff"], 16) == 1 << 12, st["CapEff"]   # CAP_NET_ADMIN only
        assert_dropped(daemon.pid, tmp_path / "nfflowd.pid")
        polls = lambda: int(nfflowd(lab, "-c", cfg, "check").stdout  # noqa: E731
                            .split("polls = ")[1].split()[0])
        assert wait_for(lambda: polls() >= 2, timeout=10)    # table dumps as nobody work
        lab.flush()
        # the early connection is exported, by the poller or (if the kernel
        # attached events to it after all) by its DESTROY event
        assert wait_for(lambda: "connections_exported = 1" in
                        nfflowd(lab, "-c", cfg, "check").stdout, timeout=15)
        # #15 item 10: another process of that user cannot stop or reload it
        for sig in ("TERM", "HUP", "INT"):
            subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "kill", f"-{sig}", str(daemon.pid)], check=True, timeout=10)
        assert wait_for(lambda: "signals_refused = 3" in
                        nfflowd(lab, "-c", cfg, "check").stdout, timeout=10), \
            (daemon.poll(), nfflowd(lab, "-c", cfg, "check").stdout, "".join(log)[-3000:])
        assert daemon.poll() is None
        assert "reloads = 0" in nfflowd(lab, "-c", cfg, "check").stdout
    finally:
        stop(daemon)                        # root's SIGTERM does
    daemon.log_reader.join(5)
    text = "".join(log)
    assert daemon.returncode == 0, text
    assert "poll_failed" not in text and "syslog_dropped=0" in text, text
    assert text.count("event=signal_refused") == 3 and "sender_uid=65534" in text, text
    collector.stop()
    sports = [int(r.split("|")[2]) for r in v5_records(collector)]
    assert early[1] in sports, sports
    shutil.rmtree(sockdir)


def test_metrics_endpoint_serves_the_running_daemons_counters(lab, tmp_path):
    collector = Nfcapd(lab, tmp_path, port=20607)
    catcher = SyslogCatcher(tmp_path / "log.sock")
    cfg = config(tmp_path, "nfflowd.yaml", 20607, catcher.path,
                 extra="metrics: {listen: '127.0.0.1:29469'}\n")
    daemon, log = start_nfflowd(lab, cfg)
    scrape = ("import urllib.request; print(urllib.request.urlopen("
              "'http://127.0.0.1:29469/metrics', timeout=5).read().decode())")
    try:
        connections(lab, 2)
        lab.flush()
        assert flush_and_wait(lab, catcher, 6)

        def metrics():
            return lab.ns(lab.fw, sys.executable, "-c", scrape).stdout
        seen = []

        def scraped_after_export():
            seen.append(metrics())
            return "nfflowd_connections_exported_total 2.0" in seen[-1]
        assert wait_for(scraped_after_export, timeout=10), seen[-1]
        text = seen[-1]
        assert 'nfflowd_records_sent_total{collector="127.0.0.1:20607/v5"} 6.0' in text, text
        assert 'nfflowd_events_total{kind="destroy"} 2.0' in text, text
    finally:
        stop(daemon)
    daemon.log_reader.join(5)
    assert daemon.returncode == 0, "".join(log)
    collector.stop()


def test_sched_priority_fifo_and_refused(lab, tmp_path):
    """sched_priority: check tries it, the daemon runs SCHED_RR at it; without
    CAP_SYS_NICE the daemon says so and runs under the normal scheduler."""
    from nfflowd.app import schedule
    catcher = SyslogCatcher(tmp_path / "log.sock")
    cfg = config(tmp_path, "nfflowd.yaml", 20605, catcher.path, extra="sched_priority: 5\n")
    r = nfflowd(lab, "-c", cfg, "check")
    assert "scheduling: sched_priority 5: SCHED_RR permitted" in r.stdout, r.stdout
    daemon, log = start_nfflowd(lab, cfg)
    try:
        assert schedule.describe(daemon.pid) == "SCHED_RR 5"
        assert 'scheduling="SCHED_RR 5"' in next(x for x in log if "event=ready" in x)
        assert not any("sched_priority_refused" in x for x in log)
    finally:
        stop(daemon)
    assert daemon.returncode == 0, "".join(log)

    # without CAP_SYS_NICE (bounding set): refused, said, and the daemon runs
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(["ip", "netns", "exec", lab.fw, "setpriv", "--bounding-set=-sys_nice",
                        sys.executable, "-m", "nfflowd.cli", "-c", str(cfg), "check"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert "sched_priority 5: SCHED_RR refused (Operation not permitted)" in r.stdout, r
    assert r.returncode == 4, r
    p, log = start_nfflowd(lab, cfg, prefix=("setpriv", "--bounding-set=-sys_nice"))
    try:
        assert schedule.describe(p.pid) == "SCHED_OTHER"
    finally:
        stop(p)
    p.log_reader.join(5)
    text = "".join(log)
    assert "event=sched_priority_refused" in text and "priority=5" in text, text
    assert "scheduling=SCHED_OTHER" in text, text
    assert p.returncode == 0, text


def unit_settings(key) -> list[str]:
    """The values of ``key`` in the shipped unit, in order."""
    text = (ROOT / "init" / "nfflowd.service").read_text()
    return re.findall(rf"^{key}=(.*)$", text, re.M)


def syscall_names(spec: str) -> set[str]:
    """The system calls that a SystemCallFilter= value names, groups expanded
    by systemd-analyze itself."""
    out = set()
    for item in spec.split():
        if not item.startswith("@"):
            out.add(item)
            continue
        text = subprocess.run(["systemd-analyze", "syscall-filter", item], capture_output=True,
                              text=True, timeout=30, check=True).stdout
        for line in text.splitlines()[1:]:
            line = line.strip()
            if line and not line.startswith("#"):
                out |= syscall_names(line)
    return out


def unit_syscalls() -> set[str]:
    """What the unit's SystemCallFilter= lines allow, applied in order as
    systemd does: the first (an allow list) sets, a ~ line removes, others add."""
    allowed: set[str] = set()
    for i, value in enumerate(unit_settings("SystemCallFilter")):
        assert i or not value.startswith("~"), "the unit's first filter is an allow list"
        if value.startswith("~"):
            allowed -= syscall_names(value[1:])
        else:
            allowed |= syscall_names(value)
    return allowed


# Loads a seccomp filter allowing the system calls listed in argv[1] (any
# other fails with EPERM, SystemCallErrorNumber=EPERM), then execs argv[2:].
SECCOMP = r"""
import ctypes, errno, os, sys
lib = ctypes.CDLL("libseccomp.so.2")
lib.seccomp_init.restype = ctypes.c_void_p
ctx = ctypes.c_void_p(lib.seccomp_init(ctypes.c_uint32(0x00050000 | errno.EPERM)))
for name in open(sys.argv[1]).read().split():
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr >= 0:
        assert lib.seccomp_rule_add(ctx, ctypes.c_uint32(0x7fff0000), nr, 0) == 0, name
assert lib.seccomp_load(ctx) == 0
os.execvp(sys.argv[2], sys.argv[2:])
"""


def under_the_unit(tmp_path) -> tuple[str, ...]:
    """A command prefix that runs as root in the shipped unit would: its
    capability bounding set and NoNewPrivileges (setpriv), its system call
    filter (seccomp, through libseccomp)."""
    if shutil.which("setpriv") is None or shutil.which("systemd-analyze") is None:
        pytest.skip("needs setpriv (util-linux) and systemd-analyze")
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        pytest.skip("libseccomp.so.2 (a dependency of systemd) not found")
    [bounding] = unit_settings("CapabilityBoundingSet")
    assert unit_settings("NoNewPrivileges") == ["yes"]
    assert unit_settings("SystemCallErrorNumber") == ["EPERM"]
    caps = ",".join("+" + c.lower().removeprefix("cap_") for c in bounding.split())
    allowed = tmp_path / "syscalls"
    allowed.write_text("\n".join(sorted(unit_syscalls())))
    return ("setpriv", f"--bounding-set=-all,{caps}", "--inh-caps=-all", "--no-new-privs",
            sys.executable, "-I", "-c", SECCOMP, str(allowed))


def test_user_works_under_the_units_capability_set(lab, tmp_path):
    """#15 item 10: the unit's bounding set lacked CAP_SETUID and CAP_SETGID
    (and its system call filter the set-uid calls), so `user:` under systemd
    failed with "Operation not permitted" (and was restarted every 5 s).  The
    daemon is run here as systemd would run it (see under_the_unit)."""
    prefix = under_the_unit(tmp_path)
    collector = Nfcapd(lab, tmp_path, port=20609)
    sockdir = Path(tempfile.mkdtemp(prefix="nfflowd-test-"))
    os.chmod(sockdir, 0o755)
    catcher = SyslogCatcher(sockdir / "log.sock")
    os.chmod(catcher.path, 0o666)
    cfg = config(tmp_path, "nfflowd.yaml", 20609, catcher.path, extra="user: nobody\n")
    daemon, log = start_nfflowd(lab, cfg, prefix=prefix)
    try:
        st = proc_status(daemon.pid)
        assert st["Seccomp"] == "2"                     # the filter is on
        assert st["Uid"].split()[:2] == [str(65534)] * 2, st["Uid"]
        assert_dropped(daemon.pid, tmp_path / "nfflowd.pid")
        connections(lab, 1)
        assert flush_and_wait(lab, catcher, 3)
    finally:
        stop(daemon)
    daemon.log_reader.join(5)
    text = "".join(log)
    assert daemon.returncode == 0, text
    collector.stop()
    assert len(v5_records(collector)) == 3
    shutil.rmtree(sockdir)
