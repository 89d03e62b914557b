"""Dropping root once the sockets are open, keeping only CAP_NET_ADMIN (the
table dumps are ctnetlink requests, needed for as long as the daemon runs);
and the control signals read with their senders (a signalfd), so that only
root may stop or reload a daemon that runs as a user.  prctl and capset are
called through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import pwd
import signal
import struct

from nfflowd.errors import NfflowdError

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


def libc():
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


def _drop_bounding_set(c, keep_mask: int) -> None:
    """Every capability outside ``keep_mask`` out of the bounding set."""
    for cap in range(_last_cap() + 1):
        if keep_mask >> cap & 1 or c.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) != 1:
            continue
        if c.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise PrivilegeError(
                f"prctl(PR_CAPBSET_DROP, {cap}): {os.strerror(ctypes.get_errno())} "
                "(narrowing the capability bounding set takes CAP_SETPCAP)")


def drop_privileges(user: str, keep: tuple[int, ...] = (CAP_NET_ADMIN,)) -> None:
    """Become ``user`` (and its primary group, no supplementary groups),
    keeping only the capabilities in ``keep``.  Raises PrivilegeError.

    A plain setuid() would lose CAP_NET_ADMIN, which the poller's table
    dumps need: the permitted set is kept across setuid() with
    PR_SET_KEEPCAPS, then the effective and permitted sets are narrowed to
    ``keep`` with capset(2).  Nothing else is kept: while still root, every
    other capability is dropped from the bounding set (PR_CAPBSET_DROP,
    which needs CAP_SETPCAP), and once the user is changed
    PR_SET_NO_NEW_PRIVS is set, so that no program the daemon could be made
    to run gains anything (setuid bits, file capabilities).  The result is
    checked in /proc/self/status (CapEff, CapBnd, NoNewPrivs)."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"user: no such user: {user!r}") from None
    if os.geteuid() != 0:
        if os.geteuid() == pw.pw_uid:
            return
        raise PrivilegeError(f"user: cannot become {user!r}: not started as root")
    c = libc()
    mask = 0
    for cap in keep:
        mask |= 1 << cap
    _drop_bounding_set(c, mask)
    if c.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0:
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
    if c.capset(ctypes.byref(header), data) != 0:
        raise PrivilegeError(f"capset: {os.strerror(ctypes.get_errno())}")
    c.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)
    if c.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    got = {f: _status(f) for f in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs")}
    want = {"CapEff": mask, "CapPrm": mask, "CapBnd": mask, "NoNewPrivs": 1}
    if got != want:
        raise PrivilegeError(f"after dropping to {user!r}: "
                             + ", ".join(f"{k} {got[k]:#x} (expected {want[k]:#x})"
                                         for k in want if got[k] != want[k]))


# -- signals: after dropping root, only root's count ---------------------------------
# A process may signal any process of its own user, so once the daemon runs
# as `user:` every other process of that user could stop or reload it.  The
# daemon reads SIGTERM, SIGINT and SIGHUP from a signalfd instead, which says
# who sent each, and acts only on those sent by root or by the kernel (a
# terminal's Ctrl-C).  SIGKILL and SIGSTOP cannot be refused: a user of its
# own is the only protection from them.  Every thread must block these
# signals, or the kernel hands them to one that does not: so they are
# blocked before any thread starts (numpy's OpenBLAS starts some at import),
# with block_control_signals().
CONTROL_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SFD_NONBLOCK = 0o4000
SFD_CLOEXEC = 0o2000000
_SIGINFO = struct.Struct("IiiII")   # ssi_signo, ssi_errno, ssi_code, ssi_pid, ssi_uid
_SIGINFO_SIZE = 128
SENT_BY_A_PROCESS = (0, -1, -6)     # si_code SI_USER (kill), SI_QUEUE, SI_TKILL


def block_control_signals() -> None:
    """Block CONTROL_SIGNALS in this thread and the threads it starts."""
    signal.pthread_sigmask(signal.SIG_BLOCK, CONTROL_SIGNALS)


def unblock_control_signals() -> None:
    """Undo ``block_control_signals`` in this thread (threads started
    meanwhile keep them blocked: the signals then go to this one)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, CONTROL_SIGNALS)


def _unblocked_threads(signals) -> list[int]:
    """The threads of this process that do not block all of ``signals``."""
    want = sum(1 << (sig - 1) for sig in signals)
    out = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/status") as f:
                blocked = next(int(line.split()[1], 16) for line in f
                               if line.startswith("SigBlk:"))
        except (OSError, StopIteration):
            continue            # a thread that has ended
        if blocked & want != want:
            out.append(int(tid))
    return out


class SignalFd:
    """``signals`` blocked and readable from ``fileno()`` with their senders.
    PrivilegeError if a thread of this process does not block them."""

    def __init__(self, signals=CONTROL_SIGNALS):
        self.signals = set(signals)
        mask = (ctypes.c_uint64 * 16)()     # a sigset_t: 1024 bits
        for sig in self.signals:
            mask[(sig - 1) // 64] |= 1 << ((sig - 1) % 64)
        signal.pthread_sigmask(signal.SIG_BLOCK, self.signals)
        fd = libc().signalfd(-1, ctypes.byref(mask), SFD_NONBLOCK | SFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signals)
            raise PrivilegeError(f"signalfd: {os.strerror(err)}")
        self.fd = fd
        loose = _unblocked_threads(self.signals)
        if loose:
            self.close()
            raise PrivilegeError(f"threads {loose} do not block SIGTERM, SIGINT and SIGHUP: "
                                 "other processes of the user could stop the daemon")

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[tuple[int, int, int, int]]:
        """(signal, si_code, sender pid, sender uid) of each signal pending."""
        out = []
        while True:
            try:
                data = os.read(self.fd, _SIGINFO_SIZE * 16)
            except (BlockingIOError, InterruptedError):
                break
            for off in range(0, len(data) - _SIGINFO_SIZE + 1, _SIGINFO_SIZE):
                signo, _errno, code, pid, uid = _SIGINFO.unpack_from(data, off)
                out.append((signo, code, pid, uid))
            if len(data) < _SIGINFO_SIZE * 16:
                break
        return out

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self.signals)
