"""sd_notify(3) without libsystemd: tell systemd (Type=notify) how start-up,
reloads and shutdown go, one datagram of ``KEY=VALUE`` lines to
``$NOTIFY_SOCKET``.  Without it every call is a no-op returning False; a
failed send is never fatal.
"""

from __future__ import annotations

import os
import socket
import time


def socket_address(value: str | None) -> str | bytes | None:
    """``$NOTIFY_SOCKET`` as an address for ``sendto`` (a leading ``@``: the
    abstract namespace); None when unset or not a unix socket (systemd 254+
    may also pass ``vsock:``, not supported)."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def notify(*assignments: str, unset_environment: bool = False,
           environ: dict | None = None) -> bool:
    """Send one notification made of ``KEY=VALUE`` assignments, e.g.
    ``notify("READY=1", "STATUS=running")``.  Returns whether it was sent.
    With ``unset_environment`` ``NOTIFY_SOCKET`` is removed from the
    environment afterwards, so that child processes do not inherit it."""
    env = os.environ if environ is None else environ
    address = socket_address(env.get("NOTIFY_SOCKET"))
    if unset_environment:
        env.pop("NOTIFY_SOCKET", None)
    if address is None or not assignments:
        return False
    for a in assignments:
        if "=" not in a or "\n" in a:
            raise ValueError(f"not a KEY=VALUE assignment: {a!r}")
    message = "\n".join(assignments).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(1.0)
            s.sendto(message, address)
        return True
    except OSError:
        return False


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.split()),)  # one line


def ready(status: str | None = None, **kw) -> bool:
    """Start-up is complete (READY=1), with this process as the main pid."""
    return notify("READY=1", f"MAINPID={os.getpid()}", *_status(status), **kw)


def reloading(status: str | None = None, **kw) -> bool:
    """A reload began; call ``ready()`` when it is done.  MONOTONIC_USEC is
    what systemd 253+ requires with Type=notify-reload; older ones ignore it."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}", *_status(status), **kw)


def stopping(status: str | None = None, **kw) -> bool:
    """Shutdown began (STOPPING=1)."""
    return notify("STOPPING=1", *_status(status), **kw)


def status(text: str, **kw) -> bool:
    """A one-line status shown by ``systemctl status``."""
    return notify(*_status(text), **kw)
