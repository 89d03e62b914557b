"""The syslog mirror against a real rsyslogd on a real NAT (#15 items 2, 3).

rsyslogd runs as a plain process in fw with its own config: imuxsock on a
socket in the test's temp dir, local6 written raw (``%rawmsg%``, the bytes
nfflowd sent) to a file.  nfflowd runs in fw with ``syslog.address`` on that
socket.  net.unix.max_dgram_qlen is per network namespace: fw's is set to the
kernel default, 10, before rsyslogd makes its socket, so the socket queue
takes ten lines at a time and only draining as fast as rsyslogd reads gets a
table flush's lines through.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from natlab import LAN4, NatLab, run, skip_reason, stop, wait_for
from test_e2e_burst import burst, count_table, final_counters
from test_e2e_nat import SYSLOG_RE, start_nfflowd
from test_lifecycle import nfflowd

_reason = skip_reason() or (None if shutil.which("rsyslogd") else "needs rsyslogd (Debian: rsyslog)")
pytestmark = [pytest.mark.root, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

QLEN = 10           # the kernel's default net.unix.max_dgram_qlen


@pytest.fixture
def lab():
    with NatLab() as lab:
        lab.ns(lab.fw, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600")
        lab.ns(lab.fw, "sysctl", "-qw", f"net.unix.max_dgram_qlen={QLEN}")
        yield lab


class Rsyslogd:
    """A real rsyslogd in fw: local6 from a unix socket in ``workdir`` to a
    file, one raw message a line.  It stops by itself after ``lifetime`` s."""

    def __init__(self, lab: NatLab, workdir: Path, lifetime: int = 180):
        self.lab = lab
        self.dir = workdir / "rsyslog"
        self.dir.mkdir(exist_ok=True)
        self.socket = self.dir / "log.sock"
        self.out = self.dir / "flows.log"
        self.conf = self.dir / "rsyslog.conf"
        self.conf.write_text(f"""\
global(workDirectory="{self.dir}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{self.socket}" RateLimit.Interval="0")
template(name="raw" type="string" string="%rawmsg%\\n")
if $syslogfacility-text == "local6" then {{
    action(type="omfile" file="{self.out}" template="raw")
    stop
}}
""")
        self.proc = None

    def start(self):
        assert not self.socket.exists()
        self.proc = self.lab.spawn(self.lab.fw, "timeout", "-k", "5", 180, "rsyslogd", "-n",
                                   "-f", self.conf, "-i", self.dir / "rsyslogd.pid")
        assert wait_for(lambda: self.socket.exists() or self.proc.poll() is not None,
                        timeout=15), "rsyslogd did not start"
        assert self.proc.poll() is None, self.proc.stderr.read()
        return self

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
            self.proc = None

    def lines(self) -> list[str]:
        try:
            return self.out.read_text().splitlines()
        except FileNotFoundError:
            return []

    def count(self) -> int:
        try:
            with open(self.out, "rb") as f:
                return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
        except FileNotFoundError:
            return 0


def write_config(tmp_path, syslog_path, extra=""):
    cfg = tmp_path / "nfflowd.yaml"
    cfg.write_text(f"""
export:
  source: 203.0.113.1
  collectors: []
syslog: {{enabled: true, address: {syslog_path}}}
conntrack: {{poll_interval: 1}}
pidfile: {tmp_path}/nfflowd.pid
{extra}
""")
    return cfg


def test_table_flush_reaches_rsyslogd_whole(lab, tmp_path):
    """40k connections ended at once by ``conntrack -F``: 120k lines through a
    socket queue of 10, every one written by rsyslogd, none dropped."""
    n = 40000
    assert run("ip", "netns", "exec", lab.fw, "sysctl", "-n",
               "net.unix.max_dgram_qlen").stdout.strip() == str(QLEN)
    rs = Rsyslogd(lab, tmp_path).start()
    daemon, log = start_nfflowd(lab, write_config(tmp_path, rs.socket))
    try:
        sent = burst(lab, n)
        assert wait_for(lambda: count_table(lab) >= sent, timeout=20)
        assert count_table(lab) == sent == n
        t0 = time.monotonic()
        lab.flush()
        wait_for(lambda: rs.count() >= 3 * n, timeout=40, interval=0.25)
        arrived, took = rs.count(), time.monotonic() - t0
    finally:
        counters, text = final_counters(daemon, log)
        rs.stop()
    # what arrived while the daemon ran (not its drain at stop)
    assert arrived == 3 * n, f"{arrived} of {3 * n} lines in {took:.1f} s; {counters}"
    assert int(counters["syslog_dropped"]) == 0, counters
    assert int(counters["syslog_lines"]) == 3 * n, counters
    assert int(counters["syslog_backlog"]) == 0, counters
    lines = rs.lines()
    assert len(lines) == 3 * n
    # byte for byte what syslog(3) sends: <PRI>timestamp ident[pid]: CSV
    pid = str(daemon.pid)
    keys = set()
    for line in lines:
        m = SYSLOG_RE.match(line)
        assert m and m.group(1) == "182" and m.group(2) == pid, line
        f = m.group(3).split(",")
        assert len(f) == 18, line
        keys.add((f[8], f[9], f[13], f[14]))
    assert len(keys) == 3 * n               # each record once
    assert sum(1 for k in keys if k[0] == LAN4) == n


def check_counters(lab, cfg) -> dict:
    """The running daemon's counters as ``nfflowd check`` prints them."""
    out = nfflowd(lab, "-c", cfg, "check").stdout
    return dict(re.findall(r"^  (\S+) = (\S+)$", out, re.M))


def scrape(lab, port) -> dict:
    """The metrics endpoint in fw: {sample name: value} of unlabelled samples."""
    r = lab.ns(lab.fw, sys.executable, "-c",
               "import sys, urllib.request; "
               "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())",
               f"http://127.0.0.1:{port}/metrics")
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^(nfflowd_\w+) (\S+)$", r.stdout, re.M)}


def test_missing_syslog_is_said_once_and_shown(lab, tmp_path):
    """syslog.address where nothing listens: said once at start (not again at
    each retry), the waiting lines, the failed attempts and the send errors in
    ``check`` and the metrics; once rsyslogd is there, the lines go."""
    rs = Rsyslogd(lab, tmp_path)            # made, not started: no socket yet
    cfg = write_config(tmp_path, rs.socket, "metrics: {listen: '127.0.0.1:19469'}")
    daemon, log = start_nfflowd(lab, cfg)
    try:
        text = "".join(log)
        assert text.count("event=syslog_unavailable") == 1, text
        said = next(x for x in log if "event=syslog_unavailable" in x)
        assert "level=warning" in said and str(rs.socket) in said and "error=ENOENT" in said
        assert log.index(said) < next(i for i, x in enumerate(log) if "event=ready" in x)
        n = 100
        assert burst(lab, n) == n
        assert wait_for(lambda: count_table(lab) >= n, timeout=20)
        lab.flush()
        assert wait_for(lambda: check_counters(lab, cfg).get("syslog_backlog") == str(3 * n),
                        timeout=20)
        time.sleep(2.5)                     # retries at two flush deadlines or more
        c = check_counters(lab, cfg)
        assert c["syslog_backlog"] == str(3 * n), c
        assert int(c["syslog_unavailable"]) >= 3, c
        assert (c["syslog_lines"], c["syslog_dropped"], c["syslog_send_errors"]) == \
            ("0", "0", "0"), c
        m = scrape(lab, 19469)
        assert m["nfflowd_syslog_backlog_lines"] == 3 * n, m
        assert m["nfflowd_syslog_unavailable_total"] >= 3, m
        assert m["nfflowd_syslog_send_errors_total"] == 0, m
        assert m["nfflowd_syslog_lines_dropped_total"] == 0, m
        assert "".join(log).count("event=syslog_unavailable") == 1
        rs.start()                          # syslog comes: the backlog goes
        assert wait_for(lambda: rs.count() >= 3 * n, timeout=10), rs.count()
        c = check_counters(lab, cfg)
        assert (c["syslog_backlog"], c["syslog_lines"], c["syslog_dropped"]) == \
            ("0", str(3 * n), "0"), c
    finally:
        counters, text = final_counters(daemon, log)
        rs.stop()
    assert text.count("event=syslog_unavailable") == 1, text
    assert int(counters["syslog_dropped"]) == 0 and rs.count() == 3 * n
