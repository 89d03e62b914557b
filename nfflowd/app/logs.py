"""The log's set-up (structlog), apart from the daemon so that ``meter``
does not import the daemon's machinery to configure its log."""

from __future__ import annotations

import os

import structlog


def configure_logging(level: str = "info", to_syslog: bool = False) -> None:
    """structlog: key=value lines on stderr in the foreground; to syslog,
    facility daemon, when detached (no timestamp there: syslog adds its own)."""
    import logging
    import logging.handlers
    import sys
    processors = [structlog.processors.add_log_level]
    factory = structlog.PrintLoggerFactory(file=sys.stderr)
    if to_syslog:
        try:
            handler = logging.handlers.SysLogHandler(
                address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        except OSError:
            handler = None          # no syslog daemon: nowhere to log when detached
        if handler is not None:
            handler.ident = f"nfflowd[{os.getpid()}]: "
            std = logging.getLogger("nfflowd.daemon")
            std.handlers[:] = [handler]
            std.propagate = False
            std.setLevel(logging.DEBUG)
            factory = lambda *args: std  # noqa: E731 - the bound logger calls std.info(...)
    else:
        processors.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
    processors.append(structlog.processors.LogfmtRenderer(
        key_order=["timestamp", "level", "event"], drop_missing=True))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            getattr(logging, level.upper(), logging.INFO)),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
