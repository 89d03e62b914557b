"""Command line: ``nfflowd [-c file] [-f] {start|stop|restart|reload|install|check|help|version}``
and ``nfflowd [-c file] meter {-r FILE | -i IFACE} [--bpf EXPR] [-n COUNT] [--print] [options]``.

Exit statuses: 0 all well; 1 a command failed (could not start, stop timed
out, ``meter`` met a truncated or corrupt capture or could not capture);
2 bad configuration or arguments (a bad BPF filter among them); 3 not running
(``check``, ``reload``); 4 kernel prerequisites missing (``check``).

``meter`` has options of its own; they follow the command word and go to
the meter's parser, the global options (``-c``) precede it.  Its options
default to the config's ``meter:`` section.  Every other command is parsed as
before.  Without ``-c``, ``meter`` runs on the built-in defaults when the
default config file does not exist (as softflowd needs none); a file ``-c``
names must exist, and every other command needs its config.
"""

from __future__ import annotations

import argparse
import math
import os
import select
import signal
import sys
import time

from nfflowd import __version__
from nfflowd.app.config import (DEFAULT_PATH, METER_TIMEOUT_MAX, METER_TIMEOUT_MIN, SNAPLEN_MAX,
                     SNAPLEN_MIN, Config)
from nfflowd.errors import ConfigError, NfflowdError

USAGE = ("nfflowd [ -c file ] [ -f ] { start | stop | restart | reload | install | check "
         "| help | version }\n"
         "       nfflowd [ -c file ] meter { -r FILE | -i IFACE } [ --bpf EXPR ] [ -n COUNT ] "
         "[ --print ] [ options ]")
METER_USAGE = ("nfflowd [ -c file ] meter { -r FILE | -i IFACE } [ --bpf EXPR ] [ -n COUNT ] "
               "[ --print ]\n"
               "       [ --active-timeout S ] [ --inactive-timeout S ] [ --max-flows N ] "
               "[ -s SNAPLEN ]")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3
EXIT_PREREQUISITES = 4

COMMANDS = ("start", "stop", "restart", "reload", "install", "check", "meter", "help",
            "version")
START_TIMEOUT = 60.0    # seconds `start` waits for the detached daemon to be ready
STOP_TIMEOUT = 30.0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nfflowd", usage=USAGE,
        description="Export netfilter conntrack connections (with their NAT translations) "
                    "as NetFlow v5/v9/IPFIX records, and mirror them to syslog as "
                    "flow-tools CSV lines.",
        epilog="commands: start (detach unless -f), stop, restart, reload (re-read the "
               "config), install (start at boot; --dry-run prints the steps), check "
               "(config, kernel prerequisites, daemon state and counters), meter (meter a "
               "capture file or a live interface and export its flows to the configured "
               "collectors; "
               "'nfflowd meter --help' lists its options), help, version. "
               "Exit status: 0 ok, 1 failure, 2 bad config or arguments, 3 not running, "
               "4 kernel prerequisites missing.")
    p.add_argument("-c", dest="config", metavar="file", default=None,
                   help=f"configuration file (default {DEFAULT_PATH}; meter runs on the "
                        "built-in defaults without it); the original nfflowd's "
                        "nfflowd.conf is read too")
    p.add_argument("-f", dest="foreground", action="store_true",
                   help="run in the foreground (don't detach)")
    p.add_argument("--dry-run", action="store_true",
                   help="with install: print the steps without doing them")
    p.add_argument("command", choices=COMMANDS, metavar="command",
                   help="one of: " + ", ".join(COMMANDS))
    return p


def _seconds(text: str) -> float:
    """A meter timeout option's value: seconds, within the range the
    config's meter: section allows (so never inf or nan)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not METER_TIMEOUT_MIN <= value <= METER_TIMEOUT_MAX:     # nan fails too
        raise argparse.ArgumentTypeError(
            f"expected a number of seconds from {METER_TIMEOUT_MIN} to {METER_TIMEOUT_MAX} "
            f"(30 days), got {text!r}")
    return value


def _meter_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nfflowd meter", usage=METER_USAGE,
        description="Meter packets into flows, as a NetFlow probe (softflowd) would, from a "
                    "capture file (pcap or pcapng, -r) or a live interface (-i, as root), and "
                    "export every flow to the collectors of the configuration (-c), through "
                    "the same encoders as the daemon.  Times in the records are the packets'. "
                    "The options default to the config's meter: section, then to the "
                    "values shown.  A summary goes to standard error at the end (and, for "
                    "-i, on SIGUSR1); on a terminal a progress line shows packets and flows.  "
                    "IPFIX collectors with biflow: true get RFC 5103 biflow records: the two "
                    "directions of a conversation paired (each waits up to the inactive "
                    "timeout for the other).",
        epilog="-i runs until SIGINT (Ctrl-C) or SIGTERM, or COUNT packets; every flow is "
               "then exported.  Exit status: 0 ok; 1 the capture is truncated or corrupt, "
               "or cannot be read or opened (every flow metered before the problem is "
               "still exported), or a collector's encoder refused flows (a value out of "
               "its field's range, as a time no NetFlow field holds: counted in the "
               "summary); 2 bad configuration or arguments, a bad BPF filter among them.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("-r", dest="read", metavar="FILE", help="the capture file to meter")
    src.add_argument("-i", dest="interface", metavar="IFACE",
                     help="meter a live interface (AF_PACKET with a TPACKET_V3 ring; needs "
                          "root or CAP_NET_RAW)")
    p.add_argument("--bpf", metavar="EXPR",
                   help="meter only the packets this filter accepts (tcpdump syntax, "
                        "pcap-filter(7); one quoted argument); with -i the kernel filters; "
                        "default: meter.bpf of the config, else every packet")
    p.add_argument("-n", "--count", dest="count", type=int, metavar="COUNT",
                   help="stop after COUNT packets (those passing the filter, as tcpdump -c); "
                        "default: meter.count, 0 no limit")
    p.add_argument("--print", dest="print_csv", action="store_true",
                   help="also write each flow as flow-tools CSV lines (flow-export -f2 "
                        "order) to standard output: the values the v5 records carry")
    p.add_argument("--active-timeout", type=_seconds, metavar="S",
                   help="end a flow S seconds after its first packet (default 300)")
    p.add_argument("--inactive-timeout", type=_seconds, metavar="S",
                   help="end a flow after S seconds without a packet (default 30)")
    p.add_argument("--max-flows", type=int, metavar="N",
                   help="flows held at once; beyond, the one due first ends early "
                        "(default 131072)")
    p.add_argument("-s", "--snaplen", type=int, metavar="SNAPLEN",
                   help="with -i, bytes of each packet captured (default 256: the headers "
                        "the meter reads); a capture file keeps its own")
    return p


def _split_meter(argv: list[str]) -> tuple[list[str], list[str]]:
    """(global arguments and the command word, meter's own arguments): what
    follows the command word ``meter`` is the meter parser's; any other
    command leaves argv whole to the global parser, as before."""
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            break
        if a == "-c":
            i += 2
            continue
        if a.startswith("-"):
            i += 1
            continue
        if a == "meter":
            return argv[:i + 1], argv[i + 1:]
        break
    return argv, []


def err(msg: str) -> None:
    print(f"nfflowd: {msg}", file=sys.stderr)


def _load(path: str, daemon: bool = False) -> Config:
    """The configuration; for the daemon (``daemon``), one that records
    somewhere."""
    from nfflowd.app.config import require_output
    from nfflowd.app.legacy import load_any
    cfg = load_any(path)[0]
    if daemon:
        require_output(cfg)
    return cfg


def main(argv: list[str] | None = None, default_config: str = DEFAULT_PATH) -> int:
    """The command line.  ``default_config``: the file read without ``-c``."""
    try:
        status = _main(argv, default_config)
        sys.stdout.flush()                  # here, not at exit, where it cannot be caught
        return status
    except BrokenPipeError:
        # the reader went away (nfflowd check | head): stop quietly, as other
        # command-line tools do; what is still buffered goes nowhere
        devnull = os.open(os.devnull, os.O_WRONLY)
        for stream in (sys.stdout, sys.stderr):
            try:
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):
                pass
        os.close(devnull)
        return EXIT_FAILURE


def _main(argv: list[str] | None, default_config: str) -> int:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    head, meter_args = _split_meter(argv)
    args = parser.parse_args(head)
    cmd = args.command
    if args.config is None:
        args.config = default_config
        optional = True
    else:
        optional = False
    # absolute now: a detached daemon works from / and rereads it on reload
    args.config = os.path.abspath(args.config)
    if cmd == "meter":
        mparser = _meter_parser()
        opts = mparser.parse_args(meter_args)
        return meter_command(args.config, opts, mparser, optional=optional)
    if cmd == "help":
        parser.print_help()
        return EXIT_OK
    if cmd == "version":
        print(f"nfflowd {__version__}")
        return EXIT_OK
    if cmd == "install":
        from nfflowd.app.install import install
        return install(dry_run=args.dry_run)
    if cmd == "check":
        return check(args.config)
    starting = cmd in ("start", "restart")
    if starting:
        # with user:, the daemon's signals must be blocked before any thread
        # starts (see _block_signals); loading a config with v9/IPFIX
        # collectors starts numpy's (config._encoders_fit)
        from nfflowd.app.privileges import block_control_signals
        block_control_signals()
    try:
        cfg = _load(args.config, daemon=cmd != "stop")   # stop needs only the pidfile
    except ConfigError as e:
        err(f"bad configuration:\n{e}")
        return EXIT_CONFIG
    if starting and not cfg.user:
        from nfflowd.app.privileges import unblock_control_signals
        unblock_control_signals()
    if cmd == "stop":
        return stop(cfg.pidfile)
    if cmd == "reload":
        return reload(cfg)
    if cmd == "restart":
        status = stop(cfg.pidfile)
        if status != EXIT_OK:
            return status
    return start(cfg, args.foreground)


# -- meter ---------------------------------------------------------------------
def meter_command(config_path: str, opts, mparser: argparse.ArgumentParser,
                  optional: bool = False) -> int:
    """``nfflowd meter``: argument and configuration checks, then ``meter``
    (-r) or ``meter_interface`` (-i).  ``optional``: ``config_path`` is the
    default one, not named by ``-c``: if it does not exist, the built-in
    defaults apply (said on standard error)."""
    if opts.read is None and opts.interface is None:
        mparser.print_usage(sys.stderr)
        err("meter: -r FILE or -i IFACE is required")
        return EXIT_CONFIG
    if opts.count is not None and opts.count < 0:
        err(f"meter: -n COUNT must be 0 (no limit) or more, got {opts.count}")
        return EXIT_CONFIG
    if opts.snaplen is not None and not SNAPLEN_MIN <= opts.snaplen <= SNAPLEN_MAX:
        err(f"meter: -s SNAPLEN must be from {SNAPLEN_MIN} to {SNAPLEN_MAX}, "
            f"got {opts.snaplen}")
        return EXIT_CONFIG
    if optional and not os.path.lexists(config_path):
        cfg = Config()
        err(f"no {config_path}: the built-in defaults apply ("
            + ", ".join(c.name for c in cfg.export.collectors)
            + (f", syslog mirror to {cfg.syslog.address}" if cfg.syslog.enabled else "")
            + "); -c names another configuration")
    else:
        try:
            cfg = _load(config_path)
        except ConfigError as e:
            err(f"bad configuration:\n{e}")
            return EXIT_CONFIG
    if not (cfg.export.collectors or cfg.syslog.enabled or opts.print_csv):
        err("meter: no collector, the syslog mirror off and no --print: the flows are "
            "counted, not recorded")
    m = cfg.meter
    from nfflowd.app.daemon import configure_logging
    configure_logging(cfg.log_level)     # stderr: stdout may carry --print's lines

    def pick(value, default):
        return default if value is None else value

    from nfflowd.meter import FlowTable
    try:
        table = FlowTable(active_timeout=pick(opts.active_timeout, m.active_timeout),
                          inactive_timeout=pick(opts.inactive_timeout, m.inactive_timeout),
                          max_flows=pick(opts.max_flows, m.max_flows))
    except ValueError as e:
        err(f"meter: {e}")
        return EXIT_CONFIG
    bpf = pick(opts.bpf, m.bpf) or None
    count = pick(opts.count, m.count) or None
    progress = sys.stderr.isatty()
    from nfflowd.app.meters import run_file, run_interface
    if opts.interface is not None:
        return _meter_status(run_interface(cfg, opts.interface, table, err, bpf=bpf,
                                           count=count, snaplen=pick(opts.snaplen, m.snaplen),
                                           print_csv=opts.print_csv, progress=progress))
    filt = None
    if bpf is not None:
        from nfflowd.io.bpf import Filter, FilterError
        filt = Filter(bpf)
        try:
            filt.check()                 # Ethernet; other link types when met
        except FilterError as e:
            err(f"meter --bpf: {e}")
            return EXIT_CONFIG
    return _meter_status(run_file(cfg, opts.read, table, err, print_csv=opts.print_csv,
                                  bpf=filt, count=count, progress=progress))


def _meter_status(outcome) -> int:
    """The exit status of a meter run: 1 when the capture could not be read
    whole or opened, or encoders refused records; 2 for a bad filter."""
    from nfflowd.app.meters import Outcome
    return {Outcome.OK: EXIT_OK, Outcome.BAD_FILTER: EXIT_CONFIG}.get(outcome, EXIT_FAILURE)


# -- start ---------------------------------------------------------------------
def _refuse_if_running(cfg: Config) -> bool:
    from nfflowd.app.pidfile import running_pid
    pid = running_pid(cfg.pidfile)
    if pid is not None:
        err(f"already running (pid {pid}, pidfile {cfg.pidfile})")
        return True
    return False


def start(cfg: Config, foreground: bool) -> int:
    if _refuse_if_running(cfg):
        return EXIT_FAILURE
    if foreground:
        return _run_foreground(cfg)
    return _start_detached(cfg)


def _block_signals(cfg: Config) -> None:
    """With user:, the daemon reads its signals with their senders (only
    root's count): blocked here, before a thread starts (at numpy's import)."""
    if cfg.user:
        from nfflowd.app.privileges import block_control_signals
        block_control_signals()


def _run_foreground(cfg: Config) -> int:
    _block_signals(cfg)
    from nfflowd.app.daemon import configure_logging, run_foreground
    from nfflowd.app.pidfile import AlreadyRunning, PidFile
    configure_logging(cfg.log_level)
    try:
        with PidFile(cfg.pidfile) as pf:
            # a daemon that drops root (user:) keeps no descriptor on root's pidfile
            return run_foreground(cfg, on_drop=pf.close)
    except AlreadyRunning as e:
        err(str(e))
        return EXIT_FAILURE
    except NfflowdError as e:
        err(str(e))
        return EXIT_FAILURE


def _start_detached(cfg: Config) -> int:
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
        return EXIT_OK
    if not message:
        message = f"no word from the daemon within {START_TIMEOUT:g} s (see syslog, daemon facility)"
    err(f"could not start: {message.removeprefix('error ').strip()}")
    return EXIT_FAILURE


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
    _block_signals(cfg)
    import daemon

    from nfflowd.app.daemon import configure_logging, run_foreground
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
        return EXIT_FAILURE


# -- stop, reload ---------------------------------------------------------------
def stop(pidfile_path: str) -> int:
    """Stop the daemon that the pidfile and its control socket both name.  A
    bad config is refused (exit 2) as for every other command: guessing the
    default pidfile instead stopped another instance."""
    from nfflowd.app.pidfile import NOT_RUNNING, STOPPED, PidFileError, stop as stop_pid
    try:
        status, message = stop_pid(pidfile_path, timeout=STOP_TIMEOUT)
    except PidFileError as e:
        err(str(e))
        return EXIT_FAILURE
    if status in (STOPPED, NOT_RUNNING):
        print(message)
        return EXIT_OK
    err(message)
    return EXIT_FAILURE


def reload(cfg: Config) -> int:
    from nfflowd.app.control import ControlError, query, socket_path
    from nfflowd.app.pidfile import running_pid
    pid = running_pid(cfg.pidfile)
    if pid is None:
        err(f"not running (pidfile {cfg.pidfile})")
        return EXIT_NOT_RUNNING
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
        return EXIT_OK
    deadline = time.monotonic() + 10
    after = before
    while after == before and time.monotonic() < deadline:
        time.sleep(0.05)
        after = counts() or before
    if after[0] > before[0]:
        print(f"nfflowd (pid {pid}) reloaded {cfg.path}")
        return EXIT_OK
    if after[1] > before[1]:
        result = last.get("reload")
        reason = result.get("reason") if isinstance(result, dict) else None
        err(f"nfflowd (pid {pid}) refused the new configuration"
            + (f": {reason}" if reason else "") + "; the old one stays in force")
        return EXIT_CONFIG
    err(f"nfflowd (pid {pid}) did not confirm the reload within 10 s")
    return EXIT_FAILURE


# -- check -------------------------------------------------------------------------
def check(path: str) -> int:
    from nfflowd.app.config import read_text, require_output
    from nfflowd.app.legacy import parse_any, parse_legacy, to_yaml
    status = EXIT_OK
    try:
        text = read_text(path)
        cfg, notes, legacy = parse_any(text, path)
        require_output(cfg)
    except ConfigError as e:
        print(f"configuration: INVALID\n{e}")
        return EXIT_CONFIG
    cannot = start_problems(cfg)
    if cannot:
        print(f"configuration: {cfg.path}: valid, but start and reload would refuse it here:")
        for line in cannot:
            print(f"  {line}")
        status = EXIT_CONFIG
    else:
        print(f"configuration: {cfg.path}: valid")
    if legacy:
        print("  (the original nfflowd's format; notes follow, then the YAML equivalent)")
        for note in notes:
            print(f"  note: {note}")
        print(to_yaml(parse_legacy(text, path), source=path))

    problems, unchecked = kernel_prerequisites(cfg)
    for line in problems:
        print(f"kernel: {line}")
    for line in unchecked:
        print(f"could not check: {line}")
    if problems and status == EXIT_OK:
        status = EXIT_PREREQUISITES

    running = daemon_state(cfg, unchecked_out := [])
    for line in unchecked_out:
        print(f"could not check: {line}")
    if running is False and status == EXIT_OK:
        status = EXIT_NOT_RUNNING
    return status


def start_problems(cfg: Config) -> list[str]:
    """What a valid configuration needs of this host that start and reload
    would refuse without (each with its key): collector hosts that do not
    resolve, a metrics address that is not of this host."""
    from nfflowd.io.export import ExportError, resolve
    from nfflowd.app.metrics import listen_problem
    out = []
    for i, c in enumerate(cfg.export.collectors):
        try:
            resolve(c.host, c.port)
        except ExportError as e:
            out.append(f"export.collectors[{i}].host: {e}")
    if cfg.metrics_listen:
        problem = listen_problem(cfg.metrics_listen)
        if problem:
            out.append(f"metrics.listen: {problem}")
    return out


def kernel_prerequisites(cfg: Config) -> tuple[list[str], list[str]]:
    """Problems (each with the command that fixes it) and what could not be
    checked, in the current network namespace."""
    from nfflowd.io.netlink import read_sysctl
    problems: list[str] = []
    unchecked: list[str] = []
    events = read_sysctl("nf_conntrack_events")
    if events is None:
        problems.append("conntrack is not active in this network namespace "
                        "(no net.netfilter.nf_conntrack_events); fix: modprobe nf_conntrack, "
                        "and a NAT or stateful rule makes the kernel track connections")
    else:
        if events == 0:
            problems.append("conntrack events are off; fix: "
                            "sysctl -w net.netfilter.nf_conntrack_events=1")
        else:
            print(f"kernel: nf_conntrack_events={events} (ok"
                  + ("; connections older than nfflowd are found by polling)" if events == 2
                     else ")"))
        for name, what in (("nf_conntrack_acct", "packet and byte counters"),
                           ("nf_conntrack_timestamp", "start and stop times")):
            value = read_sysctl(name)
            if value == 0:
                problems.append(f"{name}=0: no {what}; fix: sysctl -w net.netfilter.{name}=1")
            elif value is not None:
                print(f"kernel: {name}={value} (ok)")
    if os.geteuid() != 0:
        unchecked.append("subscribing to conntrack events needs CAP_NET_ADMIN; "
                         "run check as root")
        if cfg.sched_priority:
            unchecked.append(f"sched_priority {cfg.sched_priority}: SCHED_RR needs root or "
                             "CAP_SYS_NICE; run check as root")
        return problems, unchecked
    if cfg.sched_priority:
        sched_problem = _try_sched_priority(cfg.sched_priority)
        if sched_problem:
            problems.append(sched_problem)
    from nfflowd.io import netlink
    try:
        sock = netlink.ConntrackSocket(rcvbuf=cfg.conntrack.rcvbuf)
    except NfflowdError as e:
        problems.append(f"cannot subscribe to conntrack events: {e}")
    except OSError as e:
        problems.append(f"cannot subscribe to conntrack events: {e.strerror or e}")
    else:
        print(f"kernel: conntrack events can be subscribed (receive buffer obtained: "
              f"{sock.rcvbuf} bytes, asked {cfg.conntrack.rcvbuf})")
        sock.close()
    return problems, unchecked


def _try_sched_priority(priority: int) -> str | None:
    """Set SCHED_RR ``priority`` on this process and back, as the daemon
    would at start; a problem line when refused."""
    from nfflowd.app import schedule
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        schedule.set_realtime(priority)
    except OSError as e:
        return (f"sched_priority {priority}: SCHED_RR refused ({e.strerror}); the daemon "
                f"would run under the normal scheduler: {schedule.NEEDS}")
    os.sched_setscheduler(0, *before)
    print(f"scheduling: sched_priority {priority}: SCHED_RR permitted")
    return None


def daemon_state(cfg: Config, unchecked: list[str]) -> bool | None:
    """Print the running daemon's state; True running, False not, None unknown.
    Running means: the process listening on the control socket (root's,
    SO_PEERCRED) is the one the pidfile names."""
    from nfflowd.app.control import (ControlError, ControlPermissionError, Impostor, NotRunning,
                          query_peer, socket_path)
    from nfflowd.app.pidfile import PidFileError, running_pid
    try:
        pid = running_pid(cfg.pidfile)
    except PidFileError as e:
        print(f"daemon: {e}")
        return False
    try:
        state, listener = query_peer(socket_path(cfg.pidfile))
    except ControlPermissionError:
        if pid is not None:
            print(f"daemon: running (pid {pid})")
        unchecked.append("the daemon's counters: its control socket is root's only")
        return None if pid is None else True
    except NotRunning:
        if pid is not None:
            print(f"daemon: pid {pid} holds {cfg.pidfile} but does not answer on its "
                  "control socket")
            return None
        print(f"daemon: not running (pidfile {cfg.pidfile})")
        return False
    except Impostor as e:
        print(f"daemon: not running ({e})")
        return False
    except ControlError as e:
        print(f"daemon: {e}")
        return None
    if listener != pid:
        print(f"daemon: the process on the control socket (pid {listener}) is not "
              f"the one in {cfg.pidfile} ({pid or 'none'}); stop it by hand")
        return None
    print(f"daemon: running (pid {pid}), up {_duration(_number(state.get('uptime')))}, "
          f"config {state.get('config')}")
    counters = state.get("counters")
    for key, value in sorted(counters.items() if isinstance(counters, dict) else ()):
        print(f"  {key} = {value}")
    return True


def _number(value) -> float:
    return value if isinstance(value, (int, float)) else 0.0


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
