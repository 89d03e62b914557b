"""The pidfile: flock-held, refused while another live process holds it,
taken over after a crash, stale pids recognised, and stop() against real
child processes (each ends by itself within seconds)."""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from nfflowd.app import pidfile
from nfflowd.app.pidfile import AlreadyRunning, PidFile

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

# A child that looks like nfflowd (a script named nfflowd), holds the
# pidfile, listens on the control socket next to it (as the daemon does;
# not with mode "no-socket"), says "locked" and lives at most 10 seconds.
HOLDER = r"""
import os, signal, sys, time
from nfflowd.app.control import ControlServer, socket_path
from nfflowd.app.pidfile import PidFile
path, mode = sys.argv[1], sys.argv[2]
server = None
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
    if mode != "no-socket":
        server = ControlServer(socket_path(path), lambda: {"pid": os.getpid()})
    print("locked", flush=True)
    if mode == "crash":
        os._exit(3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if server is not None:
            server.handle_ready()
        time.sleep(0.05)
finally:
    if server is not None:
        server.close()
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
    # the same pid, looking like nfflowd (an operator's `nfflowd meter -i`),
    # but neither holding the pidfile nor listening on the control socket
    (tmp_path / "m").mkdir()            # not the holder's script, written below
    nf = subprocess.Popen([sys.executable, script(tmp_path / "m", "import time; time.sleep(5)"),
                           "meter", "-i", "eth0"])
    children.append(nf)
    f.write_text(f"{nf.pid}\n")
    deadline = time.monotonic() + 5
    while not pidfile.looks_like_nfflowd(pidfile.cmdline(nf.pid)) \
            and time.monotonic() < deadline:
        time.sleep(0.02)       # until the exec has replaced the command line
    assert pidfile.looks_like_nfflowd(pidfile.cmdline(nf.pid))
    assert pidfile.running_pid(f) is None
    # a daemon (lock and control socket), then a zombie (exited, not yet
    # reaped): dead
    holder = start_holder(f)
    children.append(holder)
    assert pidfile.running_pid(f) == holder.pid
    holder.kill()
    deadline = time.monotonic() + 5
    while pidfile._state(holder.pid) != "Z" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pidfile._state(holder.pid) == "Z"
    assert pidfile.running_pid(f) is None
    holder.wait(timeout=5)
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
from nfflowd.app.pidfile import PidFile
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


# -- attackers: a local user (nobody) ------------------------------------------------

NOBODY = 65534


def as_nobody(*argv, **kw):
    """Popen of argv running as nobody (setpriv, util-linux)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a process as nobody")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    return subprocess.Popen([setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}",
                             "--clear-groups", *map(str, argv)], **kw)


def _public_dir(owner):
    # not under pytest's 0700 tmp_path, which nobody cannot reach
    d = Path(tempfile.mkdtemp(prefix="nfflowd-pid-", dir="/tmp"))
    os.chmod(d, 0o755)
    os.chown(d, owner, owner)
    return d


@pytest.fixture
def userdir():
    """A directory nobody owns, as /run/nfflowd would be for `user: nobody`."""
    d = _public_dir(NOBODY)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def rundir():
    """A directory of root's, as /run is, that nobody can read."""
    d = _public_dir(0)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_planted_symlink_is_not_followed(rundir, userdir):
    """#15 item 7: the owner of the pidfile's directory plants a link to a
    file of root's; starting must not truncate and overwrite its target."""
    victim = rundir / "shadow"
    victim.write_text("root:secret:19000::::::\n")
    f = userdir / "nfflowd.pid"
    assert as_nobody("ln", "-s", victim, f).wait(timeout=10) == 0
    assert f.is_symlink()
    with pytest.raises(pidfile.PidFileError, match="symbolic link"):
        PidFile(f).acquire()
    assert victim.read_text() == "root:secret:19000::::::\n"
    # nor is anything else that is not a regular file of ours: a file nobody
    # planted, a FIFO (which would also block the open)
    f.unlink()
    assert as_nobody("sh", "-c", f"echo 1 > {f}").wait(timeout=10) == 0
    with pytest.raises(pidfile.PidFileError, match=f"owned by uid {NOBODY}"):
        PidFile(f).acquire()
    assert f.read_text() == "1\n"
    f.unlink()
    os.mkfifo(f)
    with pytest.raises(pidfile.PidFileError, match="not a regular file"):
        PidFile(f).acquire()
    assert pidfile.read_pid(rundir / "absent") is None
    with pytest.raises(pidfile.PidFileError, match="not a regular file"):
        pidfile.read_pid(f)                 # stop and check do not hang on it either


def test_a_users_lock_on_a_stale_pidfile_blocks_neither_start_nor_stop(rundir, children):
    """#15 item 8: the pidfile is world-readable, so anyone can flock it;
    such a lock is not a daemon's: start replaces the file, stop removes it."""
    f = rundir / "nfflowd.pid"
    dead = subprocess.Popen(["true"])
    dead.wait()
    f.write_text(f"{dead.pid}\n")
    os.chmod(f, 0o644)
    for flag in ("-x", "-s"):
        locker = as_nobody("flock", flag, "-n", f, "sh", "-c", "echo locked; sleep 10",
                           stdout=subprocess.PIPE, text=True)
        children.append(locker)
        assert locker.stdout.readline() == "locked\n"
        assert pidfile.lock_holder(f) is not None
        # stop: stale, and removed although locked
        status, msg = pidfile.stop(f, timeout=1)
        assert status == pidfile.NOT_RUNNING and "stale" in msg, msg
        assert not f.exists()
        f.write_text(f"{dead.pid}\n")
        os.chmod(f, 0o644)
        locker.kill()
        locker.wait(timeout=5)
    locker = as_nobody("flock", "-x", "-n", f, "sh", "-c", "echo locked; sleep 10",
                       stdout=subprocess.PIPE, text=True)
    children.append(locker)
    assert locker.stdout.readline() == "locked\n"
    with PidFile(f) as pf:
        assert pf.locked
        assert f.read_text() == f"{os.getpid()}\n"
        assert (f.stat().st_mode & 0o777) == 0o644 and f.stat().st_uid == 0
        assert pidfile.lock_holder(f) == os.getpid()
        # and the user cannot take the new file's lock from us
        assert as_nobody("flock", "-x", "-n", f, "true").wait(timeout=10) != 0
    assert not f.exists()
    assert not list(rundir.glob(".nfflowd.pid.*"))        # no temporary left


def test_stop_does_not_signal_a_process_that_merely_looks_like_nfflowd(tmp_path, children):
    """#15 item 9: a stale pid that now belongs to an operator's
    `nfflowd meter -i` is not the daemon: not signalled."""
    f = tmp_path / "nfflowd.pid"
    (tmp_path / "m").mkdir()
    meter = subprocess.Popen([sys.executable, script(tmp_path / "m", "import time; time.sleep(10)"),
                              "meter", "-i", "eth0"])
    children.append(meter)
    deadline = time.monotonic() + 5
    while not pidfile.looks_like_nfflowd(pidfile.cmdline(meter.pid)) \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    f.write_text(f"{meter.pid}\n")
    status, msg = pidfile.stop(f, timeout=1)
    assert status == pidfile.NOT_RUNNING and "stale" in msg, msg
    time.sleep(0.2)
    assert meter.poll() is None


def test_stop_signals_only_the_pid_both_the_pidfile_and_the_socket_name(tmp_path, children):
    """#15 item 9: the pidfile names one process, the control socket's
    listener is another: neither is signalled."""
    f = tmp_path / "nfflowd.pid"
    daemon = start_holder(f)
    children.append(daemon)
    (tmp_path / "o").mkdir()
    other = subprocess.Popen([sys.executable, script(tmp_path / "o", "import time; "
                                                     "time.sleep(10)"), "start"])
    children.append(other)
    f.write_text(f"{other.pid}\n")            # the daemon's pidfile, rewritten
    status, msg = pidfile.stop(f, timeout=1)
    assert status == pidfile.FAILED, msg
    assert f"names pid {other.pid}" in msg and f"pid {daemon.pid}" in msg
    time.sleep(0.2)
    assert other.poll() is None and daemon.poll() is None
    # the pidfile and the socket agree again: stopped
    f.write_text(f"{daemon.pid}\n")
    status, msg = pidfile.stop(f, timeout=5)
    assert status == pidfile.STOPPED, msg
    assert daemon.wait(timeout=5) == 0
    assert other.poll() is None


def test_stop_refuses_a_bad_config_instead_of_the_default_pidfile(tmp_path, capsys):
    """#15 item 9: with a broken config, stop said "using the default
    pidfile" and stopped whatever instance that named."""
    from nfflowd.cli import main
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"pidfile: {tmp_path}/nfflowd.pid\nexport: {{collectors: [{{port: 0}}]}}\n")
    assert main(["-c", str(bad), "stop"]) == 2
    out = capsys.readouterr()
    assert "export.collectors[0]" in out.err and "default pidfile" not in out.err
