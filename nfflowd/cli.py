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
import sys

from nfflowd import __version__
from nfflowd.app import service
from nfflowd.app.config import (DEFAULT_PATH, METER_TIMEOUT_MAX, METER_TIMEOUT_MIN, SNAPLEN_MAX,
                     SNAPLEN_MIN, Config)
from nfflowd.app.service import Status, err
from nfflowd.app.service import load as _load
from nfflowd.errors import ConfigError

USAGE = ("nfflowd [ -c file ] [ -f ] { start | stop | restart | reload | install | check "
         "| help | version }\n"
         "       nfflowd [ -c file ] meter { -r FILE | -i IFACE } [ --bpf EXPR ] [ -n COUNT ] "
         "[ --print ] [ options ]\n"
         "       nfflowd [ -c file ] trace ADDR:PORT --at TIME [ --proto P ] [ --window 2s ] "
         "[ --format table|csv|json ] [ --archive PATH ]\n"
         "       nfflowd [ -c file ] trace --private ADDR --from TIME --to TIME [ options ]\n"
         "       nfflowd [ -c file ] archive import FILE... [ --firewall NAME ] "
         "[ --archive PATH ]")
METER_USAGE = ("nfflowd [ -c file ] meter { -r FILE | -i IFACE } [ --bpf EXPR ] [ -n COUNT ] "
               "[ --print ]\n"
               "       [ --format csv|json ] [ --l7 PROTOCOLS ] [ --active-timeout S ] "
               "[ --inactive-timeout S ]\n"
               "       [ --max-flows N ] [ -s SNAPLEN ]")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3
EXIT_PREREQUISITES = 4

COMMANDS = ("start", "stop", "restart", "reload", "install", "check", "meter", "trace",
            "archive", "help", "version")
# commands whose own arguments follow the command word
OWN_ARGS = ("meter", "trace", "archive")
# an action's outcome as the command's exit status
EXIT_STATUS = {Status.OK: EXIT_OK, Status.FAILED: EXIT_FAILURE, Status.BAD_CONFIG: EXIT_CONFIG,
               Status.NOT_RUNNING: EXIT_NOT_RUNNING, Status.PREREQUISITES: EXIT_PREREQUISITES}


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
               "'nfflowd meter --help' lists its options), trace (which private host held "
               "a public address and port at a time, from the archive; 'nfflowd trace --help'), "
               "archive import (syslog CSV lines into the archive), help, version. "
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
    p.add_argument("--format", dest="fmt", choices=("csv", "json"), default="csv",
                   help="what --print writes: csv (default), or json: one JSON object per "
                        "flow record, every field (addresses and times as text) and its L7 "
                        "fields")
    p.add_argument("--l7", metavar="PROTOCOLS",
                   help="inspect the flows' first payloads for application fields: a comma-"
                        "separated list of tls, quic, http, dns, or all; 'none' turns off the "
                        "config's (default: meter.l7, off).  With -i each packet's first 384 "
                        "bytes at least are captured")
    p.add_argument("--active-timeout", type=_seconds, metavar="S",
                   help="end a flow S seconds after its first packet (default 300)")
    p.add_argument("--inactive-timeout", type=_seconds, metavar="S",
                   help="end a flow after S seconds without a packet (default 30)")
    p.add_argument("--max-flows", type=int, metavar="N",
                   help="flows held at once; beyond, the one due first ends early "
                        "(default 131072)")
    p.add_argument("--if-index", dest="if_index", type=int, metavar="N",
                   help="with -r, the ingress interface index every record carries "
                        "(egress 0; default: meter.if_index, 0 none).  With -i the records "
                        "carry that interface's own index.  Akvorado drops flows whose "
                        "ingress and egress interface are both 0")
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
        if a in OWN_ARGS:
            return argv[:i + 1], argv[i + 1:]
        break
    return argv, []


def _trace_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nfflowd trace",
        description="Name the connection(s) whose public side (the translated source "
                    "address and port, or a port forward's public address and port) held "
                    "ADDR:PORT at TIME, from the archive the daemon writes (archive: in the "
                    "config).  Every query is appended to the archive's audit.log.",
        epilog="Exit status: 0 found, 1 nothing found, 2 a bad query or an archive that "
               "cannot be read (the reason on stderr).")
    p.add_argument("target", metavar="ADDR:PORT", nargs="?",
                   help="public address and port (203.0.113.1:40000, [2001:db8::1]:40000)")
    p.add_argument("--at", metavar="TIME",
                   help="ISO 8601 ('2026-12-04 10:00:03', local time unless a zone is "
                        "given) or epoch seconds")
    p.add_argument("--window", default="2s",
                   help="how far from TIME a connection may have begun or ended (2s)")
    p.add_argument("--proto", help="tcp, udp, icmp, ... or a number")
    p.add_argument("--private", metavar="ADDR",
                   help="instead: every connection of this private address between --from "
                        "and --to (reads whole files: slower)")
    p.add_argument("--from", dest="start", metavar="TIME")
    p.add_argument("--to", dest="end", metavar="TIME")
    p.add_argument("--format", dest="fmt", choices=("table", "csv", "json"), default="table",
                   help="table (local times), csv or json (UTC)")
    p.add_argument("--archive", metavar="PATH", help="default: archive.path of the config")
    p.add_argument("--audit-log", metavar="FILE", help="default: PATH/audit.log")
    return p


def _archive_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nfflowd archive",
        description="archive import: read flow-tools CSV lines as the syslog mirror writes "
                    "them (the rsyslog file, rotated and gzipped ones too) into the archive, "
                    "so that old logs become searchable with trace.  Lines that cannot be "
                    "paired into connections are counted and reported.")
    p.add_argument("action", choices=("import",))
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--firewall", help="the firewall's name in the rows (default: the "
                                      "syslog host name of each line, else its EXADDR)")
    p.add_argument("--archive", metavar="PATH", help="default: archive.path of the config")
    return p


def archive_command(cmd: str, config: str, argv: list[str], optional: bool) -> int:
    """``trace`` and ``archive import``: arguments here, the work in
    app/trace.py."""
    from nfflowd.app import trace as tr
    opts = (_trace_parser() if cmd == "trace" else _archive_parser()).parse_args(argv)
    path = opts.archive
    if path is None:
        if optional and not os.path.exists(config):
            path = tr.DEFAULT_ARCHIVE
        else:
            try:
                a = _load(config).archive
                path = a.path
                if a.backend == "clickhouse":
                    from nfflowd.io.clickhouse import with_table
                    path = with_table(a.url, a.table)
            except ConfigError as e:
                err(f"bad configuration (or give --archive):\n{e}")
                return EXIT_CONFIG
    if cmd == "trace":
        q = tr.TraceQuery(opts.target, opts.at, opts.window, opts.proto, opts.fmt,
                          opts.private, opts.start, opts.end)
        return tr.trace(path, q, opts.audit_log)
    return tr.import_files(path, opts.files, opts.firewall)[0]


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
    if cmd in ("trace", "archive"):
        return archive_command(cmd, args.config, meter_args, optional)
    if cmd == "help":
        parser.print_help()
        return EXIT_OK
    if cmd == "version":
        print(f"nfflowd {__version__}")
        return EXIT_OK
    if cmd == "install":
        return EXIT_STATUS[service.install(args.dry_run)]
    if cmd == "check":
        from nfflowd.app.check import check
        return EXIT_STATUS[check(args.config)]
    if cmd == "stop":
        return EXIT_STATUS[service.stop(args.config)]
    if cmd == "reload":
        return EXIT_STATUS[service.reload(args.config)]
    if cmd == "restart":
        return EXIT_STATUS[service.restart(args.config, args.foreground)]
    return EXIT_STATUS[service.start(args.config, args.foreground)]


# -- meter ---------------------------------------------------------------------
def meter_command(config_path: str, opts, mparser: argparse.ArgumentParser,
                  optional: bool = False) -> int:
    """``nfflowd meter``: argument and configuration checks, then
    ``app.meters.run_file`` (-r) or ``run_interface`` (-i).  ``optional``:
    ``config_path`` is the default one, not named by ``-c``: if it does not
    exist, the built-in defaults apply (said on standard error)."""
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
    l7_cli = None
    if opts.l7 is not None:
        from nfflowd.l7.inspect import parse_protocols
        try:
            l7_cli = () if opts.l7.strip().lower() == "none" else parse_protocols(opts.l7)
        except ValueError as e:
            err(f"meter --l7: {e}")
            return EXIT_CONFIG
        if opts.l7.strip().lower() != "none" and not l7_cli:
            err("meter --l7: no protocol named (tls, quic, http, dns, all or none)")
            return EXIT_CONFIG
    if opts.fmt == "json" and not opts.print_csv:
        err("meter: --format says what --print writes; without --print nothing is printed")
    if opts.if_index is not None:
        if opts.interface is not None:
            err("meter: --if-index is for -r FILE; with -i the records carry the "
                "interface's own index")
            return EXIT_CONFIG
        if not 0 <= opts.if_index <= 2**32 - 1:
            err(f"meter: --if-index must be from 0 to {2**32 - 1}, got {opts.if_index}")
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
    from nfflowd.app.logs import configure_logging
    configure_logging(cfg.log_level, lazy=True)  # stderr: stdout may carry --print's lines

    def pick(value, default):
        return default if value is None else value

    from nfflowd.meter import FlowTable
    try:
        table = FlowTable(active_timeout=pick(opts.active_timeout, m.active_timeout),
                          inactive_timeout=pick(opts.inactive_timeout, m.inactive_timeout),
                          max_flows=pick(opts.max_flows, m.max_flows),
                          in_if=0 if opts.interface else pick(opts.if_index, m.if_index))
    except ValueError as e:
        err(f"meter: {e}")
        return EXIT_CONFIG
    bpf = pick(opts.bpf, m.bpf) or None
    count = pick(opts.count, m.count) or None
    progress = sys.stderr.isatty()
    l7 = pick(l7_cli, m.l7)
    if l7:
        from nfflowd.l7.inspect import missing_parsers
        missing = missing_parsers(l7)
        if missing:
            err(f"meter --l7: no parser for {', '.join(missing)} in this nfflowd")
            return EXIT_CONFIG
    from nfflowd.app.meters import run_file, run_interface
    if opts.interface is not None:
        return EXIT_STATUS[run_interface(cfg, opts.interface, table, bpf=bpf, count=count,
                                         snaplen=pick(opts.snaplen, m.snaplen),
                                         print_csv=opts.print_csv, progress=progress,
                                         fmt=opts.fmt, l7=l7)]
    filt = None
    if bpf is not None:
        from nfflowd.io.bpf import Filter, FilterError
        filt = Filter(bpf)
        try:
            filt.check()                 # Ethernet; other link types when met
        except FilterError as e:
            err(f"meter --bpf: {e}")
            return EXIT_CONFIG
    return EXIT_STATUS[run_file(cfg, opts.read, table, print_csv=opts.print_csv, bpf=filt,
                                count=count, progress=progress, fmt=opts.fmt, l7=l7)]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
