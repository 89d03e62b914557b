"""The daemon as a service, for the command line: start (detached, or in the
foreground with -f), stop, restart, reload, install.  Each action says what
happened on standard output or error and returns a ``Status``; the command
line maps it to its exit status.  The daemon is found by its pidfile and
asked over its control socket (``control.query``).
"""

from __future__ import annotations

import enum
import os
import select
import signal
import sys
import time

from nfflowd.app.config import Config
from nfflowd.errors import ConfigError, NfflowdError

__all__ = ["Status", "err", "load", "start", "restart", "stop", "reload", "install",
           "START_TIMEOUT", "STOP_TIMEOUT"]

START_TIMEOUT = 60.0    # seconds `start` waits for the detached daemon to be ready
STOP_TIMEOUT = 30.0
RELOAD_TIMEOUT = 10.0   # seconds `reload` waits for the daemon to confirm


class Status(enum.Enum):
    """What an action came to (the command line's exit statuses)."""
    OK = "ok"
    FAILED = "failed"                   # could not start, stop timed out, ...
    BAD_CONFIG = "bad configuration"    # or refused by the daemon (reload)
    NOT_RUNNING = "not running"
    PREREQUISITES = "kernel prerequisites missing"       # check


def err(msg: str) -> None:
    print(f"nfflowd: {msg}", file=sys.stderr)


def load(path: str, daemon: bool = False) -> Config:
    """The configuration, with encoders that fit its datagrams; for the
    daemon (``daemon``), one that records somewhere.  Raises ConfigError."""
    from nfflowd.app.config import require_output
    from nfflowd.app.legacy import load_any
    from nfflowd.app.pipeline import check_encoders
    cfg = load_any(path)[0]
    check_encoders(cfg)
    if daemon:
        require_output(cfg)
    return cfg


def _config(path: str, daemon: bool) -> Config | None:
    """``load``, with a bad configuration said on stderr (None then)."""
    try:
        return load(path, daemon)
    except ConfigError as e:
        err(f"bad configuration:\n{e}")
        return None


def _daemon_config(path: str) -> Config | None:
    """start's and restart's configuration.  With user:, the daemon's signals
    must be blocked before any thread starts (see _block_signals); loading a
    config with v9/IPFIX collectors starts numpy's (config's encoder check),
    so they are blocked first and unblocked when there is no user:."""
    from nfflowd.app.privileges import block_control_signals, unblock_control_signals
    block_control_signals()
    cfg = _config(path, daemon=True)
    if cfg is not None and not cfg.user:
        unblock_control_signals()
    return cfg


# -- the actions ---------------------------------------------------------------
def start(config_path: str, foreground: bool) -> Status:
    try:
        cfg = _daemon_config(config_path)
        if cfg is None:
            return Status.BAD_CONFIG
        return _start(cfg, foreground)
    finally:
        _unblock_signals()


def restart(config_path: str, foreground: bool) -> Status:
    try:
        cfg = _daemon_config(config_path)
        if cfg is None:
            return Status.BAD_CONFIG
        status = _stop(cfg.pidfile)
        if status is not Status.OK:
            return status
        return _start(cfg, foreground)
    finally:
        _unblock_signals()


def _unblock_signals() -> None:
    """The caller of start and restart gets its signals back, whatever the
    outcome: the daemon blocked them for itself (a forked daemon keeps its
    own mask), and a caller in the same process (a test, a program driving
    ``cli.main``) must not be left deaf to SIGTERM, nor its children."""
    from nfflowd.app.privileges import unblock_control_signals
    unblock_control_signals()


def stop(config_path: str) -> Status:
    """A bad config is refused as for every other action: guessing the
    default pidfile instead stopped another instance."""
    cfg = _config(config_path, daemon=False)        # stop needs only the pidfile
    if cfg is None:
        return Status.BAD_CONFIG
    return _stop(cfg.pidfile)


def reload(config_path: str) -> Status:
    cfg = _config(config_path, daemon=True)
    if cfg is None:
        return Status.BAD_CONFIG
    return _reload(cfg)


def install(dry_run: bool) -> Status:
    """Set nfflowd up to start at boot (``app.install``)."""
    from nfflowd.app.install import install as install_service
    return Status.OK if install_service(dry_run=dry_run) == 0 else Status.FAILED


# -- start ---------------------------------------------------------------------
def _refuse_if_running(cfg: Config) -> bool:
    from nfflowd.app.pidfile import running_pid
    pid = running_pid(cfg.pidfile)
    if pid is not None:
        err(f"already running (pid {pid}, pidfile {cfg.pidfile})")
        return True
    return False


def _start(cfg: Config, foreground: bool) -> Status:
    if _refuse_if_running(cfg):
        return Status.FAILED
    if foreground:
        return _run_foreground(cfg)
    return _start_detached(cfg)


def _block_signals(cfg: Config) -> None:
    """With user:, the daemon reads its signals with their senders (only
    root's count): blocked here, before a thread starts (at numpy's import)."""
    if cfg.user:
        from nfflowd.app.privileges import block_control_signals
        block_control_signals()


def _run_foreground(cfg: Config) -> Status:
    _block_signals(cfg)
    from nfflowd.app.daemon import run_foreground
    from nfflowd.app.logs import configure_logging
    from nfflowd.app.pidfile import AlreadyRunning, PidFile
    configure_logging(cfg.log_level)
    try:
        with PidFile(cfg.pidfile) as pf:
            # a daemon that drops root (user:) keeps no descriptor on root's pidfile
            code = run_foreground(cfg, on_drop=pf.close)
    except AlreadyRunning as e:
        err(str(e))
        return Status.FAILED
    except NfflowdError as e:
        err(str(e))
        return Status.FAILED
    return Status.OK if code == 0 else Status.FAILED


def _start_detached(cfg: Config) -> Status:
    """Fork; the child detaches with python-daemon and writes "ready" (or the
    reason it could not start) to a pipe; we return once we have read it."""
    r, w = os.pipe()
    child = os.fork()
    if child == 0:                                   # pragma: no cover (in the child)
        os.close(r)
        os._exit(_daemon_child(cfg, w))
    os.close(w)
    message = _read_until_closed(r, START_TIMEOUT)
    os.close(r)
    os.waitpid(child, 0)
    if message.startswith("ready "):
        print(f"nfflowd started (pid {message.split()[1]})")
        return Status.OK
    if not message:
        message = f"no word from the daemon within {START_TIMEOUT:g} s (see syslog, daemon facility)"
    err(f"could not start: {message.removeprefix('error ').strip()}")
    return Status.FAILED


def _read_until_closed(fd: int, timeout: float) -> str:
    chunks = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        data = os.read(fd, 4096)
        if not data:
            break
        chunks.append(data)
        if b"\n" in data:
            break
    return b"".join(chunks).decode(errors="replace")


def _daemon_child(cfg: Config, w: int) -> int:               # pragma: no cover (child)
    """The detached daemon's process; returns its exit status."""
    _block_signals(cfg)
    import daemon

    from nfflowd.app.daemon import run_foreground
    from nfflowd.app.logs import configure_logging
    from nfflowd.app.pidfile import PidFile

    def tell(text: str) -> None:
        try:
            os.write(w, (text.replace("\n", "; ") + "\n").encode())
        except OSError:
            pass

    pidfile = PidFile(cfg.pidfile)

    def ready() -> None:
        tell(f"ready {os.getpid()}")
        os.close(w)

    try:
        ctx = daemon.DaemonContext(pidfile=pidfile, umask=0o022,
                                   working_directory="/", files_preserve=[w],
                                   detach_process=True)
        with ctx:
            configure_logging(cfg.log_level, to_syslog=True)
            return run_foreground(cfg, on_ready=ready, on_drop=pidfile.close)
    except BaseException as e:  # noqa: BLE001 - whatever it was, the parent must hear it
        tell(f"error {e}")
        return 1


# -- stop, reload ---------------------------------------------------------------
def _stop(pidfile_path: str) -> Status:
    """Stop the daemon that the pidfile and its control socket both name."""
    from nfflowd.app.pidfile import NOT_RUNNING, STOPPED, PidFileError, stop as stop_pid
    try:
        status, message = stop_pid(pidfile_path, timeout=STOP_TIMEOUT)
    except PidFileError as e:
        err(str(e))
        return Status.FAILED
    if status in (STOPPED, NOT_RUNNING):
        print(message)
        return Status.OK
    err(message)
    return Status.FAILED


def _reload(cfg: Config) -> Status:
    """SIGHUP to the daemon, then its reload counters (over the control
    socket) say whether it reloaded or refused."""
    from nfflowd.app.control import ControlError, query, socket_path
    from nfflowd.app.pidfile import running_pid
    pid = running_pid(cfg.pidfile)
    if pid is None:
        err(f"not running (pidfile {cfg.pidfile})")
        return Status.NOT_RUNNING
    sock = socket_path(cfg.pidfile)
    last: dict = {}

    def counts():
        try:
            state = query(sock)
            c = state["counters"]
            last["reload"] = state.get("last_reload") or {}
            return c.get("reloads", 0), c.get("reloads_refused", 0)
        except (ControlError, KeyError, TypeError):
            return None
    before = counts()
    os.kill(pid, signal.SIGHUP)
    if before is None:
        print(f"reload requested (SIGHUP to pid {pid})")
        return Status.OK
    deadline = time.monotonic() + RELOAD_TIMEOUT
    after = before
    while after == before and time.monotonic() < deadline:
        time.sleep(0.05)
        after = counts() or before
    if after[0] > before[0]:
        print(f"nfflowd (pid {pid}) reloaded {cfg.path}")
        return Status.OK
    if after[1] > before[1]:
        result = last.get("reload")
        reason = result.get("reason") if isinstance(result, dict) else None
        err(f"nfflowd (pid {pid}) refused the new configuration"
            + (f": {reason}" if reason else "") + "; the old one stays in force")
        return Status.BAD_CONFIG
    err(f"nfflowd (pid {pid}) did not confirm the reload within {RELOAD_TIMEOUT:g} s")
    return Status.FAILED
