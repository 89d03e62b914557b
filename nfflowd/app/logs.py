"""The log's set-up (structlog), apart from the daemon so that ``meter``
does not import the daemon's machinery to configure its log; ``log``, the
logger "nfflowd" imported on first use (structlog and the asyncio it
imports cost ~0.04 s of a ``meter -r`` start that logs nothing)."""

from __future__ import annotations

import os
import sys

_pending: tuple | None = None


def configure_logging(level: str = "info", to_syslog: bool = False,
                      lazy: bool = False) -> None:
    """structlog: key=value lines on stderr in the foreground; to syslog,
    facility daemon, when detached (no timestamp there: syslog adds its own).
    ``lazy``: unless structlog is already imported, at the first use of
    ``log`` (callers that log through ``log`` alone)."""
    global _pending
    if lazy and "structlog" not in sys.modules:
        _pending = (level, to_syslog)
        return
    _pending = None
    import logging
    import logging.handlers

    import structlog
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


class _Log:
    """structlog's logger "nfflowd", imported (and configured, if that
    waited) on first use."""

    def __getattr__(self, name):
        import structlog
        if _pending is not None:
            configure_logging(*_pending)
        return getattr(structlog.get_logger("nfflowd"), name)


log = _Log()
