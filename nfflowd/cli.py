"""Command line: ``nfflowd [-c file] [-f] {start|stop|restart|reload|install|check|help|version}``."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .config import DEFAULT_PATH, load
from .errors import ConfigError, NfflowdError

USAGE = "nfflowd [ -c file ] [ -f ] { start | stop | restart | reload | install | check | help | version }"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

COMMANDS = ("start", "stop", "restart", "reload", "install", "check", "help", "version")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nfflowd", usage=USAGE,
        description="Export netfilter conntrack connections (with their NAT translations) "
                    "as NetFlow records, and mirror them to syslog as flow-tools CSV lines.")
    p.add_argument("-c", dest="config", metavar="file", default=DEFAULT_PATH,
                   help=f"configuration file (default {DEFAULT_PATH})")
    p.add_argument("-f", dest="foreground", action="store_true",
                   help="run in the foreground (don't detach)")
    p.add_argument("command", choices=COMMANDS, metavar="command",
                   help="one of: " + ", ".join(COMMANDS))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "help":
        parser.print_help()
        return EXIT_OK
    if args.command == "version":
        print(f"nfflowd {__version__}")
        return EXIT_OK
    try:
        cfg = load(args.config)
    except ConfigError as e:
        print(f"nfflowd: bad configuration:\n{e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        print(f"{cfg.path}: configuration is valid")
        return EXIT_OK
    if args.command == "start":
        if not args.foreground:
            print("nfflowd: detaching is not built yet (issue 3); run 'nfflowd -f start'",
                  file=sys.stderr)
            return EXIT_FAILURE
        from .daemon import run_foreground
        try:
            return run_foreground(cfg)
        except NfflowdError as e:
            print(f"nfflowd: {e}", file=sys.stderr)
            return EXIT_FAILURE
    print(f"nfflowd: '{args.command}' is not built yet (issue 3)", file=sys.stderr)
    return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
