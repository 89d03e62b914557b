"""``nfflowd check``: is the configuration valid, would start accept it on
this host, does the kernel offer what the daemon needs, and is the daemon
running (its state and counters, asked over its control socket).  Says each
finding on standard output and returns a ``service.Status``.
"""

from __future__ import annotations

import os

from nfflowd.app.config import Config
from nfflowd.app.service import Status
from nfflowd.errors import ConfigError, NfflowdError

__all__ = ["check", "start_problems", "kernel_prerequisites", "daemon_state"]


def check(path: str) -> Status:
    """The configuration, then the kernel, then the daemon: the first
    problem found sets the status (BAD_CONFIG, PREREQUISITES, NOT_RUNNING)."""
    found = _check_config(path)
    if found is None:
        return Status.BAD_CONFIG
    cfg, status = found
    if not _check_kernel(cfg) and status is Status.OK:
        status = Status.PREREQUISITES
    _check_interfaces(cfg)
    unchecked: list[str] = []
    running = daemon_state(cfg, unchecked)
    for line in unchecked:
        print(f"could not check: {line}")
    if running is False and status is Status.OK:
        status = Status.NOT_RUNNING
    return status


def _check_config(path: str) -> tuple[Config, Status] | None:
    """Say whether the configuration is valid (None: not) and whether start
    would accept it here (BAD_CONFIG: not); a legacy one is shown in YAML."""
    from nfflowd.app.config import read_text, require_output
    from nfflowd.app.legacy import parse_any, parse_legacy, to_yaml
    from nfflowd.app.pipeline import check_encoders
    status = Status.OK
    try:
        text = read_text(path)
        cfg, notes, legacy = parse_any(text, path)
        check_encoders(cfg)
        require_output(cfg)
    except ConfigError as e:
        print(f"configuration: INVALID\n{e}")
        return None
    cannot = start_problems(cfg)
    if cannot:
        print(f"configuration: {cfg.path}: valid, but start and reload would refuse it here:")
        for line in cannot:
            print(f"  {line}")
        status = Status.BAD_CONFIG
    else:
        print(f"configuration: {cfg.path}: valid")
    if legacy:
        print("  (the original nfflowd's format; notes follow, then the YAML equivalent)")
        for note in notes:
            print(f"  note: {note}")
        print(to_yaml(parse_legacy(text, path), source=path))
    return cfg, status


def _check_kernel(cfg: Config) -> bool:
    """Say what the kernel offers; False when a prerequisite is missing."""
    problems, unchecked = kernel_prerequisites(cfg)
    for line in problems:
        print(f"kernel: {line}")
    for line in unchecked:
        print(f"could not check: {line}")
    return not problems


def _check_interfaces(cfg: Config) -> None:
    """Say how records get their interface indexes, and what the route
    lookup holds here (a map's interface names not found are named)."""
    icfg = cfg.interfaces
    if icfg.method == "none":
        print("interfaces: method none (every record's interface indexes are 0)")
        return
    from nfflowd.interfaces import Interfaces
    from nfflowd.io import rtnl
    try:
        ifs = Interfaces(icfg.method, dict(icfg.map))
        ifs.update(rtnl.dump())
    except (OSError, NfflowdError) as e:
        print(f"could not check: interfaces: {e}")
        return
    n = ifs.sizes()
    print(f"interfaces: method {icfg.method}: {n['links']} links, {n['routes4']} IPv4 and "
          f"{n['routes6']} IPv6 main-table routes, {n['local']} local addresses and routes")
    names = {name for name, _d in ifs.links.values()}
    missing = sorted({x for _v, pair in icfg.map for x in pair
                      if isinstance(x, str) and x not in names})
    if missing:
        print(f"interfaces: the map names interfaces not found here (index 0 until they "
              f"appear): {', '.join(missing)}")


def start_problems(cfg: Config) -> list[str]:
    """What a valid configuration needs of this host that start and reload
    would refuse without (each with its key): collector hosts that do not
    resolve, a metrics address that is not of this host, an archive
    directory that cannot be made or written."""
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
    if cfg.archive.enabled and cfg.archive.backend == "embedded":
        from nfflowd.io.archive import path_problem
        problem = path_problem(cfg.archive.path)
        if problem:
            out.append(f"archive.path: {problem}")
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
