"""Dropping root once the sockets are open, keeping only CAP_NET_ADMIN.

nfflowd needs CAP_NET_ADMIN for as long as it runs, not only at start: the
table dumps (start-up, and the poll for connections older than the daemon)
are ctnetlink requests, which the kernel allows only with that capability.
So a plain setuid() would break the poller.  Linux lets a process keep its
permitted capabilities across setuid() with PR_SET_KEEPCAPS; afterwards the
effective and permitted sets are narrowed to CAP_NET_ADMIN with capset(2).

Nothing else is kept: while still root, every capability but those kept is
dropped from the bounding set (PR_CAPBSET_DROP, which needs CAP_SETPCAP), and
once the user is changed PR_SET_NO_NEW_PRIVS is set, so that no program the
daemon could be made to run gains anything (setuid bits, file capabilities).

The standard library has neither prctl nor capset, so both are called through
ctypes; the result is checked in /proc/self/status (CapEff, CapBnd,
NoNewPrivs).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd

from .errors import NfflowdError

PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
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


def _status(field: str) -> int:
    """A number of /proc/self/status (capability masks are hexadecimal)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                value = line.split()[1]
                return int(value, 16) if field.startswith("Cap") else int(value)
    return 0


def effective_caps() -> int:
    """This process's effective capability mask (from /proc/self/status)."""
    return _status("CapEff")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 63


def _drop_bounding_set(libc, keep_mask: int) -> None:
    """Every capability outside ``keep_mask`` out of the bounding set."""
    for cap in range(_last_cap() + 1):
        if keep_mask >> cap & 1 or libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) != 1:
            continue
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise PrivilegeError(
                f"prctl(PR_CAPBSET_DROP, {cap}): {os.strerror(ctypes.get_errno())} "
                "(narrowing the capability bounding set takes CAP_SETPCAP)")


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
    mask = 0
    for cap in keep:
        mask |= 1 << cap
    _drop_bounding_set(libc, mask)
    if libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"prctl(PR_SET_KEEPCAPS): {os.strerror(ctypes.get_errno())}")
    try:
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)
    except OSError as e:
        raise PrivilegeError(f"cannot become {user!r}: {e.strerror}") from None
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = mask & 0xFFFFFFFF
    data[1].effective = data[1].permitted = mask >> 32
    if libc.capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"capset: {os.strerror(ctypes.get_errno())}")
    libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    got = {f: _status(f) for f in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs")}
    want = {"CapEff": mask, "CapPrm": mask, "CapBnd": mask, "NoNewPrivs": 1}
    if got != want:
        raise PrivilegeError(f"after dropping to {user!r}: "
                             + ", ".join(f"{k} {got[k]:#x} (expected {want[k]:#x})"
                                         for k in want if got[k] != want[k]))
