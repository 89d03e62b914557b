"""The pidfile: flock-held, refused while another live process holds it,
taken over after a crash, stale pids recognised, and stop() against real
child processes (each ends by itself within seconds)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nfflowd import pidfile
from nfflowd.pidfile import AlreadyRunning, PidFile

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# A child that looks like nfflowd (a script named nfflowd), holds the
# pidfile, says "locked" and lives at most 10 seconds.
HOLDER = r"""
import os, signal, sys, time
from nfflowd.pidfile import PidFile
path, mode = sys.argv[1], sys.argv[2]
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
elif mode == "slow-term":
    signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.3), sys.exit(0)))
else:
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
pf = PidFile(path)
pf.acquire()
# From here on SIGTERM may arrive (the test sends it as soon as it reads
# "locked"), and its handler raises SystemExit wherever the holder is - even
# inside print() - so everything after acquire() must be under the
# try/finally that releases (it was not: the pidfile was left behind).
try:
    print("locked", flush=True)
    if mode == "crash":
        os._exit(3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.05)
finally:
    pf.release()
"""


def script(tmp_path, text):
    d = tmp_path / "bin"
    d.mkdir(exist_ok=True)
    f = d / "nfflowd"
    f.write_text(text)
    return str(f)


def start_holder(path, mode="normal"):
    p = subprocess.Popen([sys.executable, script(Path(path).parent, HOLDER), str(path), mode],
                         stdout=subprocess.PIPE, text=True, env=ENV)
    line = p.stdout.readline()
    assert line == "locked\n", line
    return p


@pytest.fixture
def children():
    procs = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=5)


def test_read_pid(tmp_path):
    f = tmp_path / "x.pid"
    assert pidfile.read_pid(f) is None
    f.write_text("")
    assert pidfile.read_pid(f) is None
    f.write_text("12ab\n")
    assert pidfile.read_pid(f) is None
    f.write_text("0\n")
    assert pidfile.read_pid(f) is None
    f.write_text(" 4242\n")
    assert pidfile.read_pid(f) == 4242


def test_pidfile_writes_our_pid_and_removes_it(tmp_path):
    f = tmp_path / "nfflowd.pid"
    with PidFile(f) as pf:
        assert pf.locked
        assert f.read_text() == f"{os.getpid()}\n"
        assert (f.stat().st_mode & 0o777) == 0o644
        assert pidfile.lock_holder(f) == os.getpid()
    assert not f.exists()
    assert pidfile.lock_holder(f) is None


def test_second_instance_is_refused_naming_the_pid(tmp_path, children):
    f = tmp_path / "nfflowd.pid"
    holder = start_holder(f)
    children.append(holder)
    with pytest.raises(AlreadyRunning) as e:
        PidFile(f).acquire()
    assert e.value.pid == holder.pid
    assert f"pid {holder.pid}" in str(e.value) and str(f) in str(e.value)
    assert f.read_text() == f"{holder.pid}\n"       # the refused one changed nothing
    assert pidfile.running_pid(f) == holder.pid


def test_a_crashed_holders_pidfile_is_taken_over(tmp_path, children):
    f = tmp_path / "nfflowd.pid"
    p = start_holder(f, "crash")
    children.append(p)
    assert p.wait(timeout=5) == 3
    assert f.read_text() == f"{p.pid}\n"             # left behind
    assert pidfile.running_pid(f) is None            # but stale
    with PidFile(f):
        assert f.read_text() == f"{os.getpid()}\n"
    assert not f.exists()


def test_running_pid_rejects_dead_zombie_and_foreign_processes(tmp_path, children):
    f = tmp_path / "nfflowd.pid"
    # a live process that is not nfflowd (a reused pid)
    other = subprocess.Popen(["sleep", "5"])
    children.append(other)
    f.write_text(f"{other.pid}\n")
    assert pidfile.running_pid(f) is None
    # the same pid, looking like nfflowd
    nf = subprocess.Popen([sys.executable, script(tmp_path, "import time; time.sleep(5)")])
    children.append(nf)
    f.write_text(f"{nf.pid}\n")
    deadline = time.monotonic() + 5
    while pidfile.running_pid(f) is None and time.monotonic() < deadline:
        time.sleep(0.02)       # until the exec has replaced the command line
    assert pidfile.running_pid(f) == nf.pid
    # a zombie (exited, not yet reaped) is dead
    nf.kill()
    deadline = time.monotonic() + 5
    while pidfile._state(nf.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pidfile._state(nf.pid) == "Z"
    assert pidfile.running_pid(f) is None
    nf.wait(timeout=5)
    assert pidfile.running_pid(f) is None


def test_looks_like_nfflowd():
    yes = [["/usr/local/bin/nfflowd", "-f", "start"], ["nfflowd"],
           ["/usr/bin/python3", "/opt/venv/bin/nfflowd", "start"],
           ["python3.11", "-u", "-X", "dev", "/usr/local/bin/nfflowd", "stop"],
           ["python", "-m", "nfflowd.cli", "start"], ["python3", "-m", "nfflowd"]]
    no = [["sleep", "5"], ["/usr/bin/python3", "/opt/other", "nfflowd"], [], None,
          ["vim", "/etc/nfflowd.yaml"], ["vim", "/usr/local/bin/nfflowd"],
          ["python3", "-c", "pass", "nfflowd"], ["python3", "-m", "nfflowdx"],
          ["/usr/bin/nfflowd.sh"]]
    assert all(pidfile.looks_like_nfflowd(a) for a in yes)
    assert not any(pidfile.looks_like_nfflowd(a) for a in no)


def test_stop_terminates_and_waits(tmp_path, children):
    f = tmp_path / "nfflowd.pid"
    p = start_holder(f, "slow-term")
    children.append(p)
    t0 = time.monotonic()
    status, msg = pidfile.stop(f, timeout=5)
    assert status == pidfile.STOPPED, msg
    assert time.monotonic() - t0 >= 0.25               # it waited for the slow exit
    assert str(p.pid) in msg
    assert p.wait(timeout=5) == 0
    assert not f.exists()                              # the daemon removed its pidfile


def test_stop_times_out_naming_the_pid(tmp_path, children):
    f = tmp_path / "nfflowd.pid"
    p = start_holder(f, "ignore-term")
    children.append(p)
    t0 = time.monotonic()
    status, msg = pidfile.stop(f, timeout=0.5)
    assert status == pidfile.TIMEOUT
    assert 0.5 <= time.monotonic() - t0 < 3
    assert f"pid {p.pid}" in msg and p.poll() is None


def test_stop_without_daemon(tmp_path, children):
    f = tmp_path / "nfflowd.pid"
    assert pidfile.stop(f, timeout=1)[0] == pidfile.NOT_RUNNING
    other = subprocess.Popen(["sleep", "5"])
    children.append(other)
    f.write_text(f"{other.pid}\n")
    status, msg = pidfile.stop(f, timeout=1)
    assert status == pidfile.NOT_RUNNING and "stale" in msg
    assert other.poll() is None                        # a foreign process is not signalled
    assert not f.exists()                              # the stale pidfile is removed


DETACHED = r"""
import os, sys, time, daemon
from nfflowd.pidfile import PidFile
path, marker = sys.argv[2], sys.argv[3]
with daemon.DaemonContext(pidfile=PidFile(path), working_directory="/"):
    with open(path) as f:
        seen = f.read().strip()
    with open(marker + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {seen}\n")
    os.rename(marker + ".tmp", marker)
    time.sleep(1)
"""


def test_works_as_python_daemon_pidfile(tmp_path):
    f, marker = tmp_path / "nfflowd.pid", tmp_path / "marker"
    subprocess.run([sys.executable, "-c", DETACHED, "nfflowd-test", str(f), str(marker)],
                   env=ENV, timeout=10, check=True)
    deadline = time.monotonic() + 5
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    pid, seen = marker.read_text().split()
    assert seen == pid                          # the detached process's own pid
    assert pidfile.running_pid(f) == int(pid)
    with pytest.raises(AlreadyRunning):
        PidFile(f).acquire()
    deadline = time.monotonic() + 5
    while f.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not f.exists()                       # removed by DaemonContext.close()
