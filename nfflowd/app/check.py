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

__all__ = ["check", "meter_notes", "start_problems", "kernel_prerequisites", "daemon_state", "event_rules",
           "EVENT_RULES"]


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
    for line in meter_notes(cfg):
        print(line)
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


def meter_notes(cfg: Config) -> list[str]:
    """What ``check`` says of the meter's L7 inspection (meter.l7): the
    protocols, and what a live capture keeps of each packet for them."""
    m = cfg.meter
    if not m.l7:
        return []
    from nfflowd.l7.inspect import MIN_SNAPLEN
    out = [f"meter: L7 inspection on ({', '.join(m.l7)})"]
    if m.snaplen < MIN_SNAPLEN:
        out.append(f"meter: warning: meter.snaplen {m.snaplen} cuts the payload L7 inspection "
                   f"reads: live captures keep {MIN_SNAPLEN} bytes of each packet instead "
                   "(a capture file keeps its own snaplen; the summary counts the packets "
                   "whose payload it cut)")
    return out


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
        _check_events(events, problems, unchecked)
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
        unchecked.append("nftables flowtables and the per-event timestamp need "
                         "CAP_NET_ADMIN; run check as root")
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
    if events is not None:
        _check_flowtables(unchecked)
        _check_event_time(unchecked)
    return problems, unchecked


# The rules that have the kernel send NEW and DESTROY events only: they work
# with nf_conntrack_events=0 (a ct event mask set on a connection before it
# is confirmed brings its events whatever the sysctl) and with 2 (connections
# made before a listener existed), and leave out UPDATE events.  The chains
# run after conntrack (priority -200) made the entry and before it is
# confirmed (the hooks' last priority), on the two paths every connection
# starts on: packets arriving (prerouting) and made here (output).
EVENT_RULES = """table inet nfflowd_events {
    chain prerouting {
        type filter hook prerouting priority filter; policy accept;
        ct event set new,destroy
    }
    chain output {
        type filter hook output priority filter; policy accept;
        ct event set new,destroy
    }
}"""
CONNTRACK_PRIORITY = -200       # NF_IP_PRI_CONNTRACK: an entry exists only after it
# the paths a connection can start on, and which hooks see its first packet
# before it is confirmed
_PATHS = ("forwarded", "delivered here", "made here")
_HOOK_PATHS = {"prerouting": {"forwarded", "delivered here"}, "input": {"delivered here"},
               "forward": {"forwarded"}, "output": {"made here"},
               "postrouting": {"forwarded", "made here"}}
_NFT_FAMILIES = {"inet": (4, 6), "ip": (4,), "ip6": (6,)}


def event_rules(objects: list) -> tuple[set, list, list]:
    """The ``ct event set`` rules of an nft ruleset (``nft -j list ruleset``
    objects): (the (IP version, path) pairs where a rule in effect asks for
    NEW and DESTROY events, where each such rule is, problems: rules with
    no effect or that leave DESTROY out)."""
    chains = {}
    for o in objects:
        c = o.get("chain") if isinstance(o, dict) else None
        if isinstance(c, dict) and "hook" in c:
            chains[(c.get("family"), c.get("table"), c.get("name"))] = (c["hook"],
                                                                          c.get("prio", 0))
    covered: set = set()
    where: list = []
    problems: list = []
    for o in objects:
        r = o.get("rule") if isinstance(o, dict) else None
        if not isinstance(r, dict):
            continue
        for e in r.get("expr") or ():
            m = e.get("mangle") if isinstance(e, dict) else None
            if not (isinstance(m, dict) and m.get("key") == {"ct": {"key": "event"}}):
                continue
            value = m.get("value")
            mask = {value} if isinstance(value, str) else set(value or ())
            name = f"{r.get('family')} {r.get('table')} {r.get('chain')}"
            base = chains.get((r.get("family"), r.get("table"), r.get("chain")))
            if base is None:
                where.append(f"{name} (not a base chain: counted only where it is jumped to)")
                continue
            hook, prio = base
            if not isinstance(prio, int) or prio <= CONNTRACK_PRIORITY:
                problems.append(f"nft rule in {name} sets ct events at priority {prio}, "
                                f"before conntrack ({CONNTRACK_PRIORITY}) makes the entry: "
                                "it has no effect; fix: a priority above "
                                f"{CONNTRACK_PRIORITY} (e.g. filter)")
                continue
            if "destroy" not in mask:
                problems.append(f"nft rule in {name} sets ct events {','.join(sorted(mask))} "
                                "without destroy: the connections it meets send no DESTROY "
                                "event and nfflowd exports no record of them; fix: "
                                "ct event set new,destroy")
                continue
            if "new" not in mask:
                continue
            where.append(name)
            for v in _NFT_FAMILIES.get(r.get("family"), ()):
                for path in _HOOK_PATHS.get(hook, ()):
                    covered.add((v, path))
    return covered, where, problems


def _missing(covered: set) -> list:
    return [f"IPv{v} {p}" for v in (4, 6) for p in _PATHS if (v, p) not in covered]


def _check_events(events: int, problems: list, unchecked: list) -> None:
    """nf_conntrack_events, and the nft rules that set a connection's events."""
    from nfflowd.io.kernelstate import StateError, nft_ruleset
    try:
        covered, where, rule_problems = event_rules(nft_ruleset())
    except StateError as e:
        covered, where, rule_problems = None, [], []
        if events in (0, 2):
            unchecked.append(f"the nft rules that set conntrack events: {e}")
    problems.extend(rule_problems)
    missing = _missing(covered) if covered is not None else None
    advice = ("load these rules (nft -f FILE), which work with events off and leave out "
              "the UPDATE events nfflowd does not need:\n" + EVENT_RULES)
    if where:
        print(f"kernel: nft rules set conntrack events new,destroy: {'; '.join(where)}"
              + (f" (not on: {', '.join(missing)})" if missing else ""))
    if events == 0:
        if missing == []:
            print("kernel: nf_conntrack_events=0 (ok: the nft rules above ask for the events)")
        else:
            problems.append("conntrack events are off (nf_conntrack_events=0)"
                            + (f" and no nft rule asks for them on {', '.join(missing)}"
                               if where else "")
                            + "; fix: sysctl -w net.netfilter.nf_conntrack_events=1, or "
                            + advice)
    elif events == 2:
        if missing == []:
            print("kernel: nf_conntrack_events=2 (ok: the nft rules above ask for the events)")
        else:
            print("kernel: nf_conntrack_events=2 (ok; connections made while no listener "
                  "existed send no events, and are found by polling); advice: " + advice)
    else:
        print(f"kernel: nf_conntrack_events={events} (ok)")


def _check_flowtables(unchecked: list) -> None:
    """A warning per flowtable without the counter flag."""
    from nfflowd.io.kernelstate import FLOWTABLE_COUNTER, StateError, flowtables
    try:
        found = flowtables()
    except StateError as e:
        unchecked.append(f"nftables flowtables: {e}")
        return
    for ft in found:
        name = f"{ft.family} {ft.table} {ft.name}"
        if ft.flags & FLOWTABLE_COUNTER:
            print(f"kernel: nft flowtable {name} counts what it offloads (ok)")
        else:
            print(f"kernel: warning: nft flowtable {name} has no counter flag: the packets "
                  "of connections it offloads are not counted, and their records "
                  "undercount; fix: add `counter` to the flowtable's definition "
                  f"(flowtable {ft.name} {{ ...; counter }})")


def _check_event_time(unchecked: list) -> None:
    """Whether the kernel stamps each event (CTA_TIMESTAMP_EVENT)."""
    from nfflowd.io.kernelstate import StateError, probe_event_time
    from nfflowd.io.netlink import read_sysctl
    try:
        stamped = probe_event_time()
    except StateError as e:
        unchecked.append(f"whether the kernel stamps each conntrack event: {e}")
        return
    if not stamped:
        print("kernel: no per-event timestamp (CTA_TIMESTAMP_EVENT, Linux 6.14 on): "
              "NEW events are timed when received")
    elif read_sysctl("nf_conntrack_timestamp") == 1:
        print("kernel: each conntrack event carries its time (CTA_TIMESTAMP_EVENT): "
              "nfflowd times NEW events by it, not when received")
    else:
        print("kernel: this kernel can stamp each conntrack event (CTA_TIMESTAMP_EVENT), "
              "but does so only with nf_conntrack_timestamp=1, off here")


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
