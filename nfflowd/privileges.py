"""Dropping root once the sockets are open, keeping only CAP_NET_ADMIN.

nfflowd needs CAP_NET_ADMIN for as long as it runs, not only at start: the
table dumps (start-up, and the poll for connections older than the daemon)
are ctnetlink requests, which the kernel allows only with that capability.
So a plain setuid() would break the poller.  Linux lets a process keep its
permitted capabilities across setuid() with PR_SET_KEEPCAPS; afterwards the
effective and permitted sets are narrowed to CAP_NET_ADMIN with capset(2).

The standard library has neither prctl nor capset, so both are called through
ctypes; the result is checked in /proc/self/status.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd

from .errors import NfflowdError

PR_SET_KEEPCAPS = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAP_NET_ADMIN = 12


class PrivilegeError(NfflowdError):
    pass


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def effective_caps() -> int:
    """This process's effective capability mask (from /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def drop_privileges(user: str, keep: tuple[int, ...] = (CAP_NET_ADMIN,)) -> None:
    """Become ``user`` (and its primary group, no supplementary groups),
    keeping only the capabilities in ``keep``.  Raises PrivilegeError."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"user: no such user: {user!r}") from None
    if os.geteuid() != 0:
        if os.geteuid() == pw.pw_uid:
            return
        raise PrivilegeError(f"user: cannot become {user!r}: not started as root")
    libc = _libc()
    if libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"prctl(PR_SET_KEEPCAPS): {os.strerror(ctypes.get_errno())}")
    try:
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except OSError as e:
        raise PrivilegeError(f"cannot become {user!r}: {e.strerror}") from None
    mask = 0
    for cap in keep:
        mask |= 1 << cap
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = mask & 0xFFFFFFFF
    data[1].effective = data[1].permitted = mask >> 32
    if libc.capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"capset: {os.strerror(ctypes.get_errno())}")
    libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)
    if effective_caps() != mask:
        raise PrivilegeError(f"capabilities after dropping to {user!r} are "
                             f"{effective_caps():#x}, expected {mask:#x}")
