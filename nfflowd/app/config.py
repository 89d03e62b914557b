"""The configuration file: YAML in, one validated ``Config`` out.  PyYAML
parses; a schema written out below checks it key by key, so that every
problem is reported at once with the file and the dotted key
(``export.collectors[0].port``).  Defaults live in the dataclasses
(``conf/nfflowd.yaml`` documents them).  Whether the encoders fit the
datagrams is the pipeline's question (``pipeline.check_encoders``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from dataclasses import dataclass, field
import yaml

from nfflowd.errors import CONTROL_CHARS, ConfigError
from nfflowd.io.syslog import DEFAULT_BACKLOG, FACILITIES, PRIORITIES

DEFAULT_PATH = "/etc/nfflowd.yaml"

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


RECORD_KINDS = ("flows", "nat_events")
NAT_EVENT_CODES = ("rfc8158", "legacy")
VERSIONS = (5, 9, 10)


@dataclass(frozen=True)
class Collector:
    host: str
    port: int = 2055
    version: int = 5
    transport: str = "udp"
    # what this collector gets: v5 carries flows only; v9 and IPFIX default to
    # flows and RFC 8158 NAT session events
    records: tuple[str, ...] = ("flows",)
    nat_event_codes: str = "rfc8158"
    observation_domain: int | None = None   # None: export.observation_domain
    # IPFIX biflow records (RFC 5103): the meter's two directions paired
    biflow: bool = False

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        proto = "" if self.transport == "udp" else f"/{self.transport}"
        return f"{host}:{self.port}/v{self.version}{proto}"


@dataclass(frozen=True)
class ExportConfig:
    source: str | None = None
    engine_type: int = 0
    engine_id: int = 0
    collectors: tuple[Collector, ...] = (Collector("127.0.0.1"),)
    flush_interval: float = 1.0
    # v9 source ID / IPFIX observation domain ID of this exporting process
    observation_domain: int = 1
    max_datagram: int = 1400                # bytes of v9/IPFIX payload at most
    template_refresh_packets: int = 20      # resend v9/IPFIX templates every N datagrams
    template_refresh_seconds: float = 60.0  # ... and every T seconds


@dataclass(frozen=True)
class SyslogConfig:
    enabled: bool = True
    address: str = "/dev/log"
    facility: str = "local6"
    priority: str = "info"
    ident: str = "nfflowd"
    # lines held while syslog cannot take them (about 200 bytes each)
    backlog: int = DEFAULT_BACKLOG


@dataclass(frozen=True)
class ArchiveConfig:
    """The NAT trace archive (``nfflowd trace``): one row per connection,
    kept ``retention_days`` (0: for ever), made durable every
    ``flush_interval`` seconds; ``firewall`` names this host's rows (None:
    export.source, else the host name)."""
    enabled: bool = False
    path: str = "/var/lib/nfflowd/archive"
    # "embedded" (files under path) or "clickhouse" (url, table)
    backend: str = "embedded"
    url: str | None = None
    table: str = "nfflowd_archive"
    retention_days: float = 90.0
    flush_interval: float = 5.0
    firewall: str | None = None
    # batches waiting for the archive's thread; beyond, counted and dropped
    queue: int = 1024


@dataclass(frozen=True)
class ConntrackConfig:
    ttl: float = 604800.0
    poll_interval: float = 30.0
    rcvbuf: int = 64 * 1024 * 1024
    # seconds between active-timeout exports of open connections (0: off)
    active_timeout: float = 1800.0
    # False: DESTROY events only where nothing needs NEW ones (no NAT events,
    # kernel timestamps on; see app/daemon.event_groups)
    new_events: bool = True


@dataclass(frozen=True)
class MeterInterface:
    name: str
    bpf: str | None = None          # None: meter.bpf


# the capture length a packet meter may be given (meter.snaplen, meter -s)
SNAPLEN_MIN, SNAPLEN_MAX = 64, 262144
# a packet meter's active and inactive timeouts, in seconds (up to 30 days)
METER_TIMEOUT_MIN, METER_TIMEOUT_MAX = 1, 30 * 86400


@dataclass(frozen=True)
class MeterConfig:
    """The packet meter (``nfflowd meter``, and the daemon's meters): the
    command line's options default to these."""
    active_timeout: float = 300.0
    inactive_timeout: float = 30.0
    max_flows: int = 131072
    snaplen: int = 256              # bytes of each packet captured live
    bpf: str | None = None          # tcpdump filter syntax; None: every packet
    count: int = 0                  # meter: stop after this many packets; 0: no limit
    interfaces: tuple[MeterInterface, ...] = ()
    if_index: int = 0               # meter -r: the records' ingress interface index
    l7: tuple[str, ...] = ()        # application protocols inspected (l7.inspect.PROTOCOLS)


INTERFACE_METHODS = ("route", "mark", "zone", "none")


@dataclass(frozen=True)
class InterfacesConfig:
    """How records get their interface indexes (nfflowd/interfaces.py):
    ``route`` (main-table lookup), ``mark``/``zone`` (``map``: ct mark or
    zone -> (ingress, egress) of the original direction, each an interface
    name or index), ``none`` (zeros)."""
    method: str = "route"
    map: tuple[tuple[int, tuple], ...] = ()


@dataclass(frozen=True)
class Config:
    path: str = "<defaults>"
    export: ExportConfig = field(default_factory=ExportConfig)
    syslog: SyslogConfig = field(default_factory=SyslogConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    conntrack: ConntrackConfig = field(default_factory=ConntrackConfig)
    meter: MeterConfig = field(default_factory=MeterConfig)
    interfaces: InterfacesConfig = field(default_factory=InterfacesConfig)
    pidfile: str = "/run/nfflowd.pid"
    log_level: str = "info"
    # drop to this user once the sockets are open, keeping CAP_NET_ADMIN
    user: str | None = None
    # host:port of the Prometheus endpoint; None: off
    metrics_listen: str | None = None
    # SCHED_RR at this priority (1-99), as ulogd2 runs itself; 0: the
    # normal scheduler
    sched_priority: int = 0


class _Checker:
    """Collects problems as (key, message) while reading a parsed mapping."""

    def __init__(self):
        self.problems: list[tuple[str, str]] = []

    def bad(self, key, msg):
        self.problems.append((key, msg))

    def section(self, data, key, allowed):
        value = data.get(key.rsplit(".", 1)[-1], None) if isinstance(data, dict) else None
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.bad(key, f"expected a mapping, got {_kind(value)}")
            return {}
        self.unknown(value, key, allowed)
        return value

    def unknown(self, mapping, prefix, allowed):
        for k in mapping:
            if k not in allowed:
                where = f"{prefix}.{k}" if prefix else str(k)
                self.bad(where, f"unknown key (expected one of: {', '.join(sorted(allowed))})")

    def integer(self, mapping, name, key, default, lo, hi):
        if name not in mapping or mapping[name] is None:
            return default
        v = mapping[name]
        if isinstance(v, bool) or not isinstance(v, int):
            self.bad(key, f"expected an integer from {lo} to {hi}, got {v!r}")
            return default
        if not lo <= v <= hi:
            self.bad(key, f"expected an integer from {lo} to {hi}, got {v}")
            return default
        return v

    def number(self, mapping, name, key, default, lo, hi):
        if name not in mapping or mapping[name] is None:
            return default
        v = mapping[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.bad(key, f"expected a number of seconds from {lo} to {hi}, got {v!r}")
            return default
        if not lo <= v <= hi:
            self.bad(key, f"expected a number of seconds from {lo} to {hi}, got {v}")
            return default
        return float(v)

    def boolean(self, mapping, name, key, default):
        if name not in mapping or mapping[name] is None:
            return default
        v = mapping[name]
        if not isinstance(v, bool):
            self.bad(key, f"expected true or false, got {v!r}")
            return default
        return v

    def printable(self, key, v: str) -> bool:
        """No control characters: a newline in syslog.ident would forge
        syslog lines, one in a host or path would forge log lines (#15)."""
        bad = CONTROL_CHARS.search(v)
        if bad:
            self.bad(key, f"control character {bad.group()!r} not allowed, got {v!r}")
        return bad is None

    def string(self, mapping, name, key, default, choices=None):
        if name not in mapping or mapping[name] is None:
            return default
        v = mapping[name]
        if not isinstance(v, str) or not v:
            self.bad(key, f"expected a non-empty string, got {v!r}")
            return default
        if not self.printable(key, v):
            return default
        if choices is not None and v not in choices:
            self.bad(key, f"expected one of: {', '.join(choices)}; got {v!r}")
            return default
        return v


def _kind(v) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _address(c: _Checker, mapping, name, key):
    if name not in mapping or mapping[name] is None:
        return None
    v = mapping[name]
    try:
        return str(ipaddress.ip_address(str(v)))
    except ValueError:
        c.bad(key, f"expected an IPv4 or IPv6 address, got {v!r}")
        return None


def _collectors(c: _Checker, export: dict):
    raw = export.get("collectors")
    if raw is None:
        return ExportConfig.collectors
    if not isinstance(raw, list):
        c.bad("export.collectors", f"expected a list of collectors, got {_kind(raw)}")
        return ()
    out = []
    for i, item in enumerate(raw):
        key = f"export.collectors[{i}]"
        if not isinstance(item, dict):
            c.bad(key, f"expected a mapping with host, port and version, got {_kind(item)}")
            continue
        c.unknown(item, key, {"host", "port", "version", "transport", "records",
                              "nat_event_codes", "observation_domain", "biflow"})
        host = item.get("host")
        if not isinstance(host, str) or not host:
            c.bad(f"{key}.host", f"expected a host name or address, got {host!r}")
            continue
        if not c.printable(f"{key}.host", host):
            continue
        port = c.integer(item, "port", f"{key}.port", 2055, 1, 65535)
        version = c.integer(item, "version", f"{key}.version", 5, 5, 10)
        if version not in VERSIONS:
            c.bad(f"{key}.version", f"expected 5 (NetFlow v5), 9 (NetFlow v9) or 10 (IPFIX); "
                  f"got {version}")
            continue
        transport = c.string(item, "transport", f"{key}.transport", "udp", ("udp", "tcp"))
        if transport == "tcp" and version != 10:
            c.bad(f"{key}.transport", f"tcp is for IPFIX (version 10) only; this collector "
                  f"is version {version}")
        default_records = ("flows",) if version == 5 else RECORD_KINDS
        records = item.get("records", default_records)
        if (not isinstance(records, (list, tuple)) or not records
                or any(r not in RECORD_KINDS for r in records)):
            c.bad(f"{key}.records", f"expected a list of: {', '.join(RECORD_KINDS)}; "
                  f"got {records!r}")
            records = default_records
        elif version == 5 and "nat_events" in records:
            c.bad(f"{key}.records", "NetFlow v5 cannot carry nat_events (use version 9 or 10)")
        codes = c.string(item, "nat_event_codes", f"{key}.nat_event_codes", "rfc8158",
                         NAT_EVENT_CODES)
        domain = c.integer(item, "observation_domain", f"{key}.observation_domain",
                           None, 0, 2**32 - 1)
        biflow = c.boolean(item, "biflow", f"{key}.biflow", False)
        if biflow and version != 10:
            c.bad(f"{key}.biflow", f"biflow records (RFC 5103) are IPFIX (version 10) only; "
                  f"this collector is version {version}")
            biflow = False
        out.append(Collector(host, port, version, transport, tuple(dict.fromkeys(records)),
                             codes, domain, biflow))
    return tuple(out)


def _bpf(c: _Checker, mapping, key: str):
    """A filter expression, compiled now (for Ethernet) so a bad one is a
    config error naming its key."""
    expr = c.string(mapping, "bpf", key, None)
    if expr is None:
        return None
    from nfflowd.io.bpf import FilterError, compile_filter
    try:
        compile_filter(expr)
    except FilterError as e:
        c.bad(key, str(e))
    return expr


def _interface_name(name) -> bool:
    # the kernel's rules (dev_valid_name): 1 to 15 bytes, no '/', ':' or blank
    return (isinstance(name, str) and 0 < len(name.encode()) < 16 and name not in (".", "..")
            and not any(ch in name for ch in "/: \t\n"))


def _meter(c: _Checker, data) -> MeterConfig:
    m = c.section(data, "meter", {"active_timeout", "inactive_timeout", "max_flows", "snaplen",
                                  "bpf", "count", "interfaces", "if_index", "l7"})
    d = MeterConfig()
    interfaces = []
    raw = m.get("interfaces")
    if raw is not None and not isinstance(raw, list):
        c.bad("meter.interfaces", f"expected a list of interfaces, got {_kind(raw)}")
        raw = []
    for i, item in enumerate(raw or ()):
        key = f"meter.interfaces[{i}]"
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict):
            c.bad(key, f"expected an interface name or a mapping with name and bpf, "
                  f"got {_kind(item)}")
            continue
        c.unknown(item, key, {"name", "bpf"})
        name = item.get("name")
        if not _interface_name(name):
            c.bad(f"{key}.name", f"expected a network interface name (1 to 15 characters, "
                  f"no '/', ':' or blank), got {name!r}")
            continue
        if any(x.name == name for x in interfaces):
            c.bad(f"{key}.name", f"interface {name!r} is listed twice")
            continue
        interfaces.append(MeterInterface(name, _bpf(c, item, f"{key}.bpf")))
    out = MeterConfig(
        active_timeout=c.number(m, "active_timeout", "meter.active_timeout", d.active_timeout,
                                METER_TIMEOUT_MIN, METER_TIMEOUT_MAX),
        inactive_timeout=c.number(m, "inactive_timeout", "meter.inactive_timeout",
                                  d.inactive_timeout, METER_TIMEOUT_MIN, METER_TIMEOUT_MAX),
        max_flows=c.integer(m, "max_flows", "meter.max_flows", d.max_flows, 1, 2**31 - 1),
        snaplen=c.integer(m, "snaplen", "meter.snaplen", d.snaplen, SNAPLEN_MIN, SNAPLEN_MAX),
        bpf=_bpf(c, m, "meter.bpf"),
        count=c.integer(m, "count", "meter.count", d.count, 0, 2**63 - 1),
        interfaces=tuple(interfaces),
        if_index=c.integer(m, "if_index", "meter.if_index", d.if_index, 0, 2**32 - 1),
        l7=_l7(c, m.get("l7")),
    )
    return out


def _l7(c: _Checker, raw) -> tuple[str, ...]:
    """meter.l7: a list of protocols (tls, quic, http, dns) or "all"."""
    from nfflowd.l7.inspect import PROTOCOLS, parse_protocols
    if raw is None:
        return ()
    if not (isinstance(raw, list) and all(isinstance(x, str) for x in raw)) and raw != "all":
        c.bad("meter.l7", f"expected a list of protocols ({', '.join(PROTOCOLS)}) or all, "
              f"got {_kind(raw)}")
        return ()
    try:
        return parse_protocols(raw if raw != "all" else "all")
    except ValueError as e:
        c.bad("meter.l7", str(e))
        return ()


def _interfaces(c: _Checker, data) -> InterfacesConfig:
    s = c.section(data, "interfaces", {"method", "map"})
    method = c.string(s, "method", "interfaces.method", "route", INTERFACE_METHODS)
    raw = s.get("map")
    if raw is None:
        if method in ("mark", "zone"):
            c.bad("interfaces.map", f"method {method} needs a map: {method} value -> "
                  "[ingress, egress] (interface names or indexes)")
        return InterfacesConfig(method)
    if method not in ("mark", "zone"):
        c.bad("interfaces.map", f"a map is for method mark or zone; method is {method}")
        return InterfacesConfig(method)
    if not isinstance(raw, dict) or not raw:
        c.bad("interfaces.map", f"expected a mapping of {method} values to [ingress, egress], "
              f"got {_kind(raw) if raw != {} else 'an empty mapping'}")
        return InterfacesConfig(method)
    top = 2**32 - 1 if method == "mark" else 65535
    out = []
    for value, pair in raw.items():
        key = f"interfaces.map.{value}"
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
            c.bad(key, f"expected a {method} value, an integer from 0 to {top}, got {value!r}")
            continue
        if not isinstance(pair, list) or len(pair) != 2:
            c.bad(key, f"expected [ingress, egress] (two interface names or indexes), "
                  f"got {pair!r}")
            continue
        ok = True
        for side, x in zip(("ingress", "egress"), pair):
            if isinstance(x, bool) or not (
                    (isinstance(x, int) and 0 <= x <= 2**31 - 1) or _interface_name(x)):
                c.bad(key, f"{side}: expected an interface name (1 to 15 characters, no "
                      f"'/', ':' or blank) or index, got {x!r}")
                ok = False
        if ok:
            out.append((value, tuple(pair)))
    return InterfacesConfig(method, tuple(sorted(out)))


def parse(data, path: str = "<string>") -> Config:
    """Validate an already-parsed YAML document."""
    c = _Checker()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, [("", f"expected a mapping at the top level, got {_kind(data)}")])
    c.unknown(data, "", {"export", "syslog", "archive", "conntrack", "meter", "pidfile", "log", "user",
                         "metrics", "sched_priority", "interfaces"})

    ex = c.section(data, "export", {"source", "engine_type", "engine_id", "collectors",
                                    "flush_interval", "observation_domain", "max_datagram",
                                    "template_refresh_packets", "template_refresh_seconds"})
    export = ExportConfig(
        source=_address(c, ex, "source", "export.source"),
        engine_type=c.integer(ex, "engine_type", "export.engine_type", 0, 0, 255),
        engine_id=c.integer(ex, "engine_id", "export.engine_id", 0, 0, 255),
        collectors=_collectors(c, ex),
        flush_interval=c.number(ex, "flush_interval", "export.flush_interval", 1.0, 0.01, 1.0),
        observation_domain=c.integer(ex, "observation_domain", "export.observation_domain",
                                     1, 0, 2**32 - 1),
        max_datagram=c.integer(ex, "max_datagram", "export.max_datagram", 1400, 512, 65000),
        template_refresh_packets=c.integer(ex, "template_refresh_packets",
                                           "export.template_refresh_packets", 20, 0, 10**6),
        template_refresh_seconds=c.number(ex, "template_refresh_seconds",
                                          "export.template_refresh_seconds", 60.0, 0, 86400),
    )

    sl = c.section(data, "syslog", {"enabled", "address", "facility", "priority", "ident",
                                    "backlog"})
    syslog = SyslogConfig(
        enabled=c.boolean(sl, "enabled", "syslog.enabled", True),
        address=c.string(sl, "address", "syslog.address", "/dev/log"),
        facility=c.string(sl, "facility", "syslog.facility", "local6", tuple(FACILITIES)),
        priority=c.string(sl, "priority", "syslog.priority", "info", tuple(PRIORITIES)),
        ident=c.string(sl, "ident", "syslog.ident", "nfflowd"),
        backlog=c.integer(sl, "backlog", "syslog.backlog", DEFAULT_BACKLOG, 0, 10_000_000),
    )
    if syslog.enabled and not syslog.address.startswith("/"):
        _host, sep, port = syslog.address.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            c.bad("syslog.address", "expected a unix socket path (/dev/log) or host:port "
                  f"for UDP, got {syslog.address!r}")

    ar = c.section(data, "archive", {"enabled", "path", "retention_days", "flush_interval",
                                     "firewall", "queue", "backend", "url", "table"})
    archive = ArchiveConfig(
        enabled=c.boolean(ar, "enabled", "archive.enabled", False),
        path=c.string(ar, "path", "archive.path", "/var/lib/nfflowd/archive"),
        retention_days=c.number(ar, "retention_days", "archive.retention_days", 90.0, 0,
                                100 * 365),
        flush_interval=c.number(ar, "flush_interval", "archive.flush_interval", 5.0, 0.1, 3600),
        firewall=c.string(ar, "firewall", "archive.firewall", None),
        queue=c.integer(ar, "queue", "archive.queue", 1024, 1, 1_000_000),
        backend=c.string(ar, "backend", "archive.backend", "embedded",
                         ("embedded", "clickhouse")),
        url=c.string(ar, "url", "archive.url", None),
        table=c.string(ar, "table", "archive.table", "nfflowd_archive"),
    )
    if archive.backend == "clickhouse":
        if not (archive.url or "").startswith("clickhouse://"):
            c.bad("archive.url", "backend clickhouse needs url: clickhouse://host[:port]"
                  f"[/database], got {archive.url!r}")
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", archive.table):
            c.bad("archive.table", f"expected a plain table name, got {archive.table!r}")
    if archive.enabled and not archive.path.startswith("/"):
        c.bad("archive.path", f"expected an absolute path, got {archive.path!r}")

    ct = c.section(data, "conntrack", {"ttl", "poll_interval", "rcvbuf", "active_timeout",
                                       "new_events"})
    conntrack = ConntrackConfig(
        ttl=c.number(ct, "ttl", "conntrack.ttl", 604800.0, 1, 10 * 365 * 86400),
        poll_interval=c.number(ct, "poll_interval", "conntrack.poll_interval", 30.0, 0.1, 86400),
        rcvbuf=c.integer(ct, "rcvbuf", "conntrack.rcvbuf", 64 * 1024 * 1024, 65536, 2**31 - 1),
        active_timeout=c.number(ct, "active_timeout", "conntrack.active_timeout", 1800.0,
                                0, 30 * 86400),
        new_events=c.boolean(ct, "new_events", "conntrack.new_events", True),
    )
    if 0 < conntrack.active_timeout < 1:
        c.bad("conntrack.active_timeout", f"expected 0 (off) or at least 1 second, "
              f"got {conntrack.active_timeout:g}")

    meter = _meter(c, data)
    interfaces = _interfaces(c, data)

    pidfile = c.string(data, "pidfile", "pidfile", "/run/nfflowd.pid")
    lg = c.section(data, "log", {"level"})
    log_level = c.string(lg, "level", "log.level", "info", LOG_LEVELS)

    user = c.string(data, "user", "user", None)
    if user is not None:
        import pwd
        try:
            pwd.getpwnam(user)
        except KeyError:
            c.bad("user", f"no such user: {user!r}")
    mt = c.section(data, "metrics", {"listen"})
    metrics_listen = c.string(mt, "listen", "metrics.listen", None)
    if metrics_listen is not None:
        host, sep, port = metrics_listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            c.bad("metrics.listen", f"expected host:port (e.g. 127.0.0.1:9469), "
                  f"got {metrics_listen!r}")

    sched_priority = c.integer(data, "sched_priority", "sched_priority", 0, 0, 99)

    if c.problems:
        raise ConfigError(path, c.problems)
    return Config(path=path, export=export, syslog=syslog, archive=archive,
                  conntrack=conntrack, meter=meter, interfaces=interfaces, pidfile=pidfile,
                  log_level=log_level,
                  user=user, metrics_listen=metrics_listen, sched_priority=sched_priority)


def require_output(cfg: Config) -> None:
    """What the daemon needs beyond a valid file: somewhere to record the
    connections.  ``collectors: []`` with the syslog mirror on is a
    syslog-only setup, with the archive on an archive-only one; with both
    off too, every connection would be lost.  (The meter may run so: it
    counts, or prints with ``--print``.)"""
    if not cfg.export.collectors and not cfg.syslog.enabled and not cfg.archive.enabled:
        raise ConfigError(cfg.path, [("export.collectors", "empty, and syslog.enabled is "
                                      "false: the daemon would record nothing; list a "
                                      "collector or enable the syslog mirror")])


# a configuration file is small; anything bigger is a mistake (or /dev/zero)
MAX_BYTES = 1024 * 1024

_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                (stat.S_ISSOCK, "a socket"))


def read_text(path) -> str:
    """A configuration file's text: a regular file (not a FIFO, device or
    directory, which could block or never end), at most ``MAX_BYTES``, in
    UTF-8.  Raises ConfigError naming the file and the reason."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ConfigError(path, [("", f"cannot read: {e.strerror or e}")]) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a file")
        raise ConfigError(path, [("", f"is {kind}, not a regular file: give the path of "
                                      "the configuration file itself")])
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_BYTES + 1)
        except OSError as e:
            raise ConfigError(path, [("", f"cannot read: {e.strerror or e}")]) from None
    if len(data) > MAX_BYTES:
        raise ConfigError(path, [("", f"larger than {MAX_BYTES} bytes: not a configuration "
                                      "file")])
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(path, [("", f"not UTF-8: byte 0x{data[e.start]:02x} at offset "
                                      f"{e.start} (line {line}): {e.reason}")]) from None


def _duplicate_keys(root) -> list[tuple[str, str]]:
    """Keys given twice in one mapping of the composed document, with their
    dotted path (YAML itself would keep the last silently).  Iterative, and
    each node once: aliases may share or nest nodes."""
    problems = []
    seen = set()
    todo = [(root, "")]
    while todo:
        node, where = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            lines: dict = {}
            for k, v in node.value:
                if k.tag == "tag:yaml.org,2002:merge":
                    continue
                scalar = isinstance(k, yaml.ScalarNode)
                name = k.value if scalar else "?"
                here = f"{where}.{name}" if where else name
                if scalar and (k.tag, name) in lines:
                    first, line = lines[k.tag, name], k.start_mark.line + 1
                    on = f"on line {line}" if first == line else f"(lines {first} and {line})"
                    problems.append((line, here, f"given twice {on}; keep one"))
                elif scalar:
                    lines[k.tag, name] = k.start_mark.line + 1
                todo.append((v, here))
        elif isinstance(node, yaml.SequenceNode):
            todo.extend((v, f"{where}[{i}]") for i, v in enumerate(node.value))
    return [(key, msg) for _line, key, msg in sorted(problems)]


def loads(text: str, path: str = "<string>") -> Config:
    """Validate a configuration's YAML text; raises ConfigError naming file and key."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            duplicates = _duplicate_keys(node)
            if duplicates:
                raise ConfigError(path, duplicates)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(path, [("", f"not valid YAML: {where}{problem}")]) from None
    except RecursionError:
        raise ConfigError(path, [("", "not valid YAML: nested too deeply")]) from None
    finally:
        loader.dispose()
    return parse(data, path)


def load(path) -> Config:
    """Read and validate a config file; raises ConfigError naming file and key."""
    return loads(read_text(path), str(path))
