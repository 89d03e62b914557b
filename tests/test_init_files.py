"""The administrator's files in init/: checked by the tools that read them
(systemd-analyze, sh and start-stop-daemon, rsyslogd, logrotate), each run
on a copy pointed at a temp dir; skipped with the reason when a tool is
missing.  Every process started here ends by itself within seconds."""

import gzip
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INIT = ROOT / "init"
DATA = ROOT / "nfflowd" / "_data"


def need(tool):
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def wait_for(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# -- the packaged copies ---------------------------------------------------------

@pytest.mark.parametrize("name, source", [
    ("nfflowd.service", INIT / "nfflowd.service"),
    ("nfflowd.init", INIT / "nfflowd.init"),
    ("rsyslog-nfflowd.conf", INIT / "rsyslog-nfflowd.conf"),
    ("logrotate-nfflowd", INIT / "logrotate-nfflowd"),
    ("nfflowd.yaml", ROOT / "conf" / "nfflowd.yaml"),
])
def test_packaged_copies_are_identical(name, source):
    """nfflowd/_data/ ships in the wheel for `nfflowd install`; it must be
    a copy of init/ and conf/ (after editing those: cp them again)."""
    assert (DATA / name).read_bytes() == source.read_bytes(), \
        f"nfflowd/_data/{name} differs from {source.relative_to(ROOT)}: copy it again"


# -- systemd ---------------------------------------------------------------------

def unit_copy(tmp_path, text=None):
    fake = tmp_path / "bin" / "nfflowd"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    text = (INIT / "nfflowd.service").read_text() if text is None else text
    unit = tmp_path / "nfflowd.service"
    unit.write_text(text.replace("/usr/local/bin/nfflowd", str(fake)))
    return unit


def test_unit_content():
    text = (INIT / "nfflowd.service").read_text()
    keys = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k, []).append(v)
    assert keys["Type"] == ["notify"]
    assert keys["ExecStart"] == ["/usr/local/bin/nfflowd -f -c /etc/nfflowd.yaml start"]
    assert keys["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert keys["Restart"] == ["on-failure"]
    assert keys["RestartPreventExitStatus"] == ["2"]      # bad config: no restart loop
    # CAP_SETUID, CAP_SETGID and CAP_SETPCAP for `user:` (#15 item 10;
    # test_lifecycle runs the daemon with this set)
    assert set(keys["CapabilityBoundingSet"][0].split()) == {
        "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP"}
    # in this order: the set-uid calls and capset come back after ~@privileged
    assert keys["SystemCallFilter"] == ["@system-service", "~@privileged", "@setuid capset"]
    assert set(keys["RestrictAddressFamilies"][0].split()) == {
        "AF_NETLINK", "AF_UNIX", "AF_INET", "AF_INET6", "AF_PACKET"}
    assert keys["ReadWritePaths"] == ["/run"]
    # /proc/sys/net/netfilter must stay readable
    assert "ProcSubset" not in keys
    assert keys["WantedBy"] == ["multi-user.target"]
    # journald must not rate-limit the syslog mirror (a line per record)
    assert keys["LogRateLimitIntervalSec"] == ["0"]


def test_systemd_analyze_verify(tmp_path):
    tool = need("systemd-analyze")
    # The checker reports problems on stderr (and exits 0): show it does.
    bad = unit_copy(tmp_path, (INIT / "nfflowd.service").read_text()
                    .replace("Type=notify", "Type=notifyy"))
    p = subprocess.run([tool, "verify", str(bad)], capture_output=True, text=True, timeout=60)
    if "notifyy" not in p.stderr:
        pytest.skip(f"systemd-analyze verify does not work here: {p.stderr.strip()[:200]}")
    unit = unit_copy(tmp_path)
    p = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr.strip() == "", p.stderr


def test_systemd_analyze_security_exposure(tmp_path):
    tool = need("systemd-analyze")
    unit = unit_copy(tmp_path)
    p = subprocess.run([tool, "security", "--offline=true", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", p.stdout)
    if m is None:
        pytest.skip(f"systemd-analyze security --offline not available: {p.stderr.strip()[:200]}")
    print(f"exposure {m.group(1)}")
    assert float(m.group(1)) <= 3.0, p.stdout


# -- SysV ------------------------------------------------------------------------

def lsb_header(text):
    m = re.search(r"^### BEGIN INIT INFO\n(.*?)^### END INIT INFO$", text, re.M | re.S)
    assert m, "no LSB header block"
    fields, key = {}, None
    for line in m.group(1).splitlines():
        assert line.startswith("#"), line
        body = line[1:]
        km = re.match(r" ([A-Za-z-]+):\s*(.*)$", body)
        if km:
            key = km.group(1)
            fields[key] = km.group(2).strip()
        else:
            assert key and body.startswith("  "), f"bad header line {line!r}"
            fields[key] += " " + body.strip()
    return fields


def test_sysv_script_syntax_and_lsb_header():
    path = INIT / "nfflowd.init"
    for sh in ("sh", "dash", "bash"):
        if shutil.which(sh):
            p = subprocess.run([sh, "-n", str(path)], capture_output=True, text=True, timeout=10)
            assert p.returncode == 0, p.stderr
    assert os.access(path, os.X_OK)
    h = lsb_header(path.read_text())
    assert h["Provides"] == "nfflowd"
    assert {"$network", "$syslog"} <= set(h["Required-Start"].split())
    assert {"$network", "$syslog"} <= set(h["Required-Stop"].split())
    assert h["Default-Start"].split() == ["2", "3", "4", "5"]
    assert h["Default-Stop"].split() == ["0", "1", "6"]
    assert h["Short-Description"] and h["Description"]
    assert set(lsb_header("### BEGIN INIT INFO\n# Provides: x\n### END INIT INFO\n")) == {"Provides"}
    with pytest.raises(AssertionError):
        lsb_header("#!/bin/sh\n# Provides: x\n")


FAKE_DAEMON = r"""#!{python}
# Stands in for nfflowd: `check` succeeds; `start` detaches, writes the
# pidfile, notes SIGHUP, exits on SIGTERM, and never lives beyond 20 s;
# `stop` and `reload` signal the pid in the pidfile (stop waits, 5 s at most).
import os, signal, sys, time
pidfile, marker = {pidfile!r}, {marker!r}
cmd = sys.argv[-1]
if cmd == "check":
    sys.exit(0)
if cmd in ("stop", "reload"):
    try:
        pid = int(open(pidfile).read())
    except OSError:
        sys.exit(0 if cmd == "stop" else 3)
    os.kill(pid, signal.SIGTERM if cmd == "stop" else signal.SIGHUP)
    deadline = time.monotonic() + 5
    while cmd == "stop" and os.path.exists(pidfile) and time.monotonic() < deadline:
        time.sleep(0.05)
    sys.exit(1 if os.path.exists(pidfile) and cmd == "stop" else 0)
if cmd != "start":
    sys.exit(1)
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
def hup(*a):
    with open(marker, "a") as f:
        f.write("hup\n")
def term(*a):
    os.unlink(pidfile)
    os._exit(0)
signal.signal(signal.SIGHUP, hup)
signal.signal(signal.SIGTERM, term)
with open(pidfile + ".tmp", "w") as f:
    f.write(f"{{os.getpid()}}\n")
os.rename(pidfile + ".tmp", pidfile)
deadline = time.monotonic() + 20
while time.monotonic() < deadline:
    time.sleep(0.05)
os.unlink(pidfile)
"""


def test_sysv_script_drives_a_daemon(tmp_path):
    need("start-stop-daemon")
    pidfile, marker = tmp_path / "nfflowd.pid", tmp_path / "hups"
    fake = tmp_path / "bin" / "nfflowd"
    fake.parent.mkdir()
    fake.write_text(FAKE_DAEMON.format(python=sys.executable, pidfile=str(pidfile),
                                       marker=str(marker)))
    fake.chmod(0o755)
    text = (INIT / "nfflowd.init").read_text()
    for old, new in [("DAEMON=/usr/local/bin/nfflowd", f"DAEMON={fake}"),
                     ("PIDFILE=/run/nfflowd.pid", f"PIDFILE={pidfile}"),
                     ("/etc/default/$NAME", str(tmp_path / "default-nfflowd"))]:
        assert old in text
        text = text.replace(old, new)
    script = tmp_path / "nfflowd.init"
    script.write_text(text)

    def run(action):
        p = subprocess.run(["sh", str(script), action], capture_output=True, text=True,
                           timeout=60)
        return p.returncode, p.stdout + p.stderr

    def pid():
        try:
            return int(pidfile.read_text())
        except (OSError, ValueError):
            return None

    started = []
    try:
        assert run("status")[0] == 3
        rc, out = run("start")
        assert rc == 0, out
        assert wait_for(lambda: pid() is not None)
        first = pid()
        started.append(first)
        assert run("status")[0] == 0
        rc, out = run("start")                        # already running: fine, no second one
        assert rc == 0 and pid() == first, out
        assert run("reload")[0] == 0
        assert wait_for(lambda: marker.exists() and marker.read_text() == "hup\n")
        rc, out = run("restart")
        assert rc == 0, out
        assert wait_for(lambda: pid() not in (None, first))
        started.append(pid())
        assert not os.path.exists(f"/proc/{first}") or \
            open(f"/proc/{first}/stat").read().split(") ")[1][0] == "Z"
        rc, out = run("stop")
        assert rc == 0, out
        assert not pidfile.exists()
        assert run("status")[0] == 3
        rc, out = run("bogus")
        assert rc == 2 and "Usage:" in out
    finally:
        for p in started:
            if p and os.path.exists(f"/proc/{p}"):
                try:
                    os.kill(p, signal.SIGTERM)
                except ProcessLookupError:
                    pass


# -- rsyslog ---------------------------------------------------------------------

def rsyslog_conf(tmp_path, snippet_text):
    logdir = tmp_path / "log"
    snippet = tmp_path / "30-nfflowd.conf"
    snippet.write_text(snippet_text.replace("/var/log/nfflowd", str(logdir / "nfflowd")))
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(f"""\
global(workDirectory="{tmp_path}")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="{tmp_path}/log.sock")
include(file="{snippet}")
*.* action(type="omfile" file="{logdir}/syslog")
""")
    return conf, logdir


def test_rsyslog_accepts_the_snippet(tmp_path):
    tool = need("rsyslogd")
    text = (INIT / "rsyslog-nfflowd.conf").read_text()
    conf, _ = rsyslog_conf(tmp_path, text.replace("stop", "stopp"))
    p = subprocess.run([tool, "-N1", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0                    # the validation does catch errors
    conf, _ = rsyslog_conf(tmp_path, text)
    p = subprocess.run([tool, "-N1", "-f", str(conf)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr


def test_rsyslog_writes_local6_to_its_own_file_only(tmp_path):
    tool = need("rsyslogd")
    if os.geteuid() != 0:
        pytest.skip("runs rsyslogd, which wants root")
    conf, logdir = rsyslog_conf(tmp_path, (INIT / "rsyslog-nfflowd.conf").read_text())
    timeout = shutil.which("timeout")
    argv = [tool, "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslogd.pid")]
    proc = subprocess.Popen(([timeout, "20"] if timeout else []) + argv,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    flows, other = logdir / "nfflowd" / "flows.log", logdir / "syslog"
    try:
        sock_path = str(tmp_path / "log.sock")
        assert wait_for(lambda: os.path.exists(sock_path), 10), "rsyslogd did not start"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"<182>nfflowd: 1248952480,737235000,279737,172.16.1.1", sock_path)
            s.sendto(b"<174>other: not a flow", sock_path)       # local5.info
            s.sendto(b"<181>nfflowd: 2,0,0,172.16.1.1", sock_path)  # local6.notice
        assert wait_for(lambda: flows.exists() and flows.read_text().count("\n") == 2
                        and other.exists(), 10)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    lines = flows.read_text().splitlines()
    ts = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d"
    assert re.fullmatch(ts + r" \S+ nfflowd: 1248952480,737235000,279737,172\.16\.1\.1", lines[0])
    assert lines[1].endswith(" nfflowd: 2,0,0,172.16.1.1")
    assert (flows.stat().st_mode & 0o777) == 0o640
    assert "not a flow" in other.read_text()
    assert "nfflowd" not in other.read_text()      # `stop`: not also in the other logs


# -- logrotate -------------------------------------------------------------------

def test_logrotate_accepts_the_snippet(tmp_path):
    tool = need("logrotate")
    state = tmp_path / "state"
    broken = tmp_path / "broken"
    broken.write_text((INIT / "logrotate-nfflowd").read_text().replace("daily", "dayly"))
    # logrotate says "error:" for a bad line, and may still exit 0
    p = subprocess.run([tool, "-d", "-s", str(state), str(broken)], capture_output=True,
                       text=True, timeout=30)
    assert "unknown option 'dayly'" in p.stdout + p.stderr
    p = subprocess.run([tool, "-d", "-s", str(state), str(INIT / "logrotate-nfflowd")],
                       capture_output=True, text=True, timeout=30)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "error" not in out.lower(), out
    assert re.search(r"/var/log/nfflowd/flows\.log\s+after 1 days \(30 rotations\)", out), out


def test_logrotate_rotates_daily_keeps_30_and_compresses(tmp_path):
    tool = need("logrotate")
    logdir = tmp_path / "log"
    logdir.mkdir()
    marker = tmp_path / "postrotate-ran"
    text = (INIT / "logrotate-nfflowd").read_text()
    assert "/usr/lib/rsyslog/rsyslog-rotate" in text
    text = re.sub(r"postrotate\n.*?endscript", f"postrotate\n        touch {marker}\n    endscript",
                  text, flags=re.S)
    conf = tmp_path / "nfflowd.logrotate"
    conf.write_text(text.replace("/var/log/nfflowd", str(logdir)))
    (logdir / "flows.log").write_text("a flow\n")
    for day in range(1, 31):                     # 30 older rotations, the last not compressed
        name = f"flows.log-200001{day:02d}" + ("" if day == 30 else ".gz")
        (logdir / name).write_bytes(gzip.compress(b"old\n") if day != 30 else b"old\n")
    p = subprocess.run([tool, "-f", "-s", str(tmp_path / "state"), str(conf)],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert marker.exists()
    yesterday = time.strftime("%Y%m%d", time.localtime(time.time() - 86400))
    rotated = sorted(f.name for f in logdir.iterdir())
    assert f"flows.log-{yesterday}" in rotated   # dateyesterday; delaycompress: not yet gz
    assert (logdir / f"flows.log-{yesterday}").read_text() == "a flow\n"
    assert "flows.log-20000130.gz" in rotated    # the previous one compressed now
    assert "flows.log-20000101.gz" not in rotated  # beyond 30: removed
    assert len(rotated) == 30 and "flows.log" not in rotated


def test_sysv_stop_does_not_signal_a_stale_pids_namesake(tmp_path):
    """#15 item 9: the script's stop matched the pidfile and the process name
    only (start-stop-daemon --name nfflowd), so a stale pid now belonging to
    an operator's `nfflowd meter -i` got SIGTERM, then SIGKILL.  It asks
    nfflowd itself, which signals only what its control socket confirms."""
    need("start-stop-daemon")
    pidfile = tmp_path / "nfflowd.pid"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "nfflowd"                   # the real command line
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={ROOT} exec {sys.executable} "
                       "-m nfflowd.cli \"$@\"\n")
    wrapper.chmod(0o755)
    conf = tmp_path / "nfflowd.yaml"
    conf.write_text(f"pidfile: {pidfile}\n")
    meterdir = tmp_path / "m"
    meterdir.mkdir()
    meter_script = meterdir / "nfflowd"            # its process is named nfflowd
    meter_script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(15)\n")
    meter_script.chmod(0o755)
    meter = subprocess.Popen([str(meter_script), "meter", "-i", "eth0"])
    try:
        assert wait_for(lambda: open(f"/proc/{meter.pid}/comm").read().strip() == "nfflowd")
        pidfile.write_text(f"{meter.pid}\n")       # left by a daemon that crashed
        text = (INIT / "nfflowd.init").read_text()
        for old, new in [("DAEMON=/usr/local/bin/nfflowd", f"DAEMON={wrapper}"),
                         ("CONFIG=/etc/nfflowd.yaml", f"CONFIG={conf}"),
                         ("PIDFILE=/run/nfflowd.pid", f"PIDFILE={pidfile}"),
                         ("/etc/default/$NAME", str(tmp_path / "default-nfflowd"))]:
            assert old in text
            text = text.replace(old, new)
        script = tmp_path / "nfflowd.init"
        script.write_text(text)
        p = subprocess.run(["sh", str(script), "stop"], capture_output=True, text=True,
                           timeout=60)
        time.sleep(0.3)
        assert meter.poll() is None, "the namesake was signalled: " + p.stdout + p.stderr
        assert p.returncode == 0, p.stdout + p.stderr
        assert not pidfile.exists()                # the stale pidfile is removed
    finally:
        meter.kill()
        meter.wait(timeout=5)
