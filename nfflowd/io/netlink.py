"""The ctnetlink socket: conntrack events and table dumps from the kernel.

Strategy: this adapter only moves datagrams.  ``ConntrackSocket.recv`` drains
up to a round of queued datagrams (one recvmmsg where libc has it) into one
buffer and returns them as ``Datagrams``; the caller picks the decoder
(``conntrack.decode_datagrams`` or ``ctblocks.decode_blocks``).  The table
dump and the sysctl reads are here too: they are the other two ways nfflowd
asks the kernel about conntrack.
"""

from __future__ import annotations

import errno as _errno
import os as _os
import socket as _socket
import struct as _struct
from typing import NamedTuple

from nfflowd.conntrack import DecodeResult, decode, dump_request
from nfflowd.errors import SourceError

# linux include/uapi/linux/netlink.h, socket.h, netfilter/nfnetlink.h
NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_DROP_MEMBERSHIP = 2
NETLINK_BROADCAST_ERROR = 4
SO_RCVBUFFORCE = 33

NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3


class NetlinkOverrun(SourceError):
    """The kernel dropped events: the socket's receive buffer was full (ENOBUFS).

    The socket stays usable; the caller counts the overrun and resyncs (for
    instance by dumping the table)."""


class Datagrams(NamedTuple):
    """One receive round's datagrams: datagram i is ``buf[starts[i]:ends[i]]``
    (``starts``/``ends`` lists or int64 arrays; each datagram starts
    4-aligned).  ``stride``: when not 0, every datagram starts at a multiple
    of it and is no longer, and ``buf`` holds the last one's whole slot (the
    columnar decoder then reads the batch as a matrix).  ``dropped``:
    datagrams received but cut short (longer than the socket takes), left out
    and counted as malformed by ``decoded``."""
    buf: object
    starts: object
    ends: object
    stride: int = 0
    dropped: int = 0

    @property
    def count(self) -> int:
        """The datagrams in the batch (the dropped ones not counted)."""
        return len(self.starts)

    def decoded(self, decoder) -> DecodeResult:
        """The batch through ``decoder(buf, starts, ends, stride)`` (either of
        the two ctnetlink decoders), the dropped datagrams counted as
        malformed."""
        if not len(self.starts):
            return DecodeResult([], self.dropped, 0, False, [])
        res = decoder(self.buf, self.starts, self.ends, self.stride)
        if self.dropped:
            res = res._replace(malformed=res.malformed + self.dropped)
        return res


def _errno_message(what: str, err: int) -> str:
    if err in (_errno.EPERM, _errno.EACCES):
        return f"{what}: permission denied: needs CAP_NET_ADMIN (run as root)"
    if err in (_errno.EPROTONOSUPPORT, _errno.ENOENT, _errno.EOPNOTSUPP):
        return (f"{what}: {_os.strerror(err)}: is the kernel module "
                "nf_conntrack_netlink available?")
    return f"{what}: {_os.strerror(err)} (errno {err})"


def _open_netlink(what: str) -> _socket.socket:
    try:
        return _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError as e:
        raise SourceError(_errno_message(what, e.errno or 0)) from e


def _set_rcvbuf(sock: _socket.socket, size: int) -> int:
    """SO_RCVBUFFORCE (needs CAP_NET_ADMIN, ignores rmem_max), else SO_RCVBUF."""
    try:
        sock.setsockopt(_socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, size)
        except OSError:
            pass
    # the kernel reports twice the value set (bookkeeping overhead included)
    return sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF)


# plain ints: socket's flags are IntFlag members, slow in `&` on a hot path
_MSG_TRUNC = int(_socket.MSG_TRUNC)
_MSG_DONTWAIT = int(_socket.MSG_DONTWAIT)


class MultiRecv:
    """recvmmsg(2) through ctypes: up to SLOTS datagrams in one system call,
    a third of the cost of a Python recv_into per datagram (bench/README.md).
    ``create`` gives None where libc has no recvmmsg; the socket
    then receives one datagram per call.

    Each datagram is scattered over two places: its first HEAD bytes into
    slot i of ``view`` (SLOTS * HEAD bytes, back to back), the rest, if any,
    into its own TAIL-byte overflow slot.  ctnetlink event datagrams hold one
    message, 148-308 bytes in our recordings (the kernel sizes it by
    ctnetlink_nlmsg_size: tuples, counters, times, helper name, labels, a
    security context), so a batch lies in ``view`` nearly contiguous, which
    the decoder's gathers, touching every message, are faster for
    (bench/README.md).  A datagram longer than HEAD is read whole with ``datagram``;
    one longer than SLOT (HEAD + TAIL) is cut short and flagged MSG_TRUNC.
    The overflow slots are an anonymous mapping: only the pages a long
    datagram writes take memory."""

    SLOTS = 2048
    HEAD = 512
    TAIL = 8192 - 512
    SLOT = HEAD + TAIL          # the longest datagram taken whole

    @classmethod
    def create(cls):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.recvmmsg
            return cls(ctypes, fn)
        except (OSError, AttributeError, ImportError, TypeError, ValueError):
            return None

    def __init__(self, ctypes, fn):
        import mmap

        class IoVec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

        class MsgHdr(ctypes.Structure):
            _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                        ("iov", ctypes.POINTER(IoVec)), ("iovlen", ctypes.c_size_t),
                        ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                        ("flags", ctypes.c_int)]

        class MMsgHdr(ctypes.Structure):
            _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]

        fn.argtypes = [ctypes.c_int, ctypes.POINTER(MMsgHdr), ctypes.c_uint, ctypes.c_int,
                       ctypes.c_void_p]
        fn.restype = ctypes.c_int
        self._fn = fn
        self._get_errno = ctypes.get_errno
        n, head, tail = self.SLOTS, self.HEAD, self.TAIL
        self._buf = (ctypes.c_char * (n * head))()
        self._tails = mmap.mmap(-1, n * tail)
        self._tails_c = (ctypes.c_char * (n * tail)).from_buffer(self._tails)
        self._iov = (IoVec * (2 * n))()
        self._msgs = (MMsgHdr * n)()
        base = ctypes.addressof(self._buf)
        tbase = ctypes.addressof(self._tails_c)
        iov_size = ctypes.sizeof(IoVec)
        iov_base = ctypes.addressof(self._iov)
        for i in range(n):
            self._iov[2 * i].base = base + i * head
            self._iov[2 * i].len = head
            self._iov[2 * i + 1].base = tbase + i * tail
            self._iov[2 * i + 1].len = tail
            self._msgs[i].hdr.iov = ctypes.cast(iov_base + 2 * i * iov_size,
                                                ctypes.POINTER(IoVec))
            self._msgs[i].hdr.iovlen = 2
        self.view = memoryview(self._buf).cast("B")
        self.tails = memoryview(self._tails)
        size = ctypes.sizeof(MMsgHdr)
        len_at, flags_at = MMsgHdr.len.offset, MsgHdr.flags.offset
        if size % 4 or len_at % 4 or flags_at % 4:
            raise OSError("unexpected struct mmsghdr layout")
        # msg_len and msg_flags: every step-th 32-bit word of the mmsghdr
        # array from these (``arrays``)
        self._len_at, self._flags_at, self._step = len_at // 4, flags_at // 4, size // 4
        self._np_words = None       # the mmsghdr array as numpy words, made once

    def arrays(self, np, got: int):
        """(lengths, msg_flags) of the last ``recv``'s ``got`` datagrams as
        int64 arrays, read from the mmsghdr array without a Python loop."""
        if self._np_words is None:
            self._np_words = np.frombuffer(self._msgs, dtype=np.uint32)
        w, step = self._np_words, self._step
        return (w[self._len_at:self._len_at + step * got:step].astype(np.int64),
                w[self._flags_at:self._flags_at + step * got:step].astype(np.int64))

    def datagram(self, i: int, length: int) -> bytes:
        """Datagram ``i`` of the last ``recv``, ``length`` bytes of it."""
        head = self.HEAD
        if length <= head:
            return bytes(self.view[i * head:i * head + length])
        return (bytes(self.view[i * head:(i + 1) * head])
                + bytes(self.tails[i * self.TAIL:i * self.TAIL + length - head]))

    def recv(self, fd: int, n: int) -> int:
        """The count of datagrams received (their lengths and flags:
        ``arrays``), -errno on failure (0: none queued)."""
        n = min(n, self.SLOTS)
        for _ in range(8):      # EINTR: try again (bounded)
            got = self._fn(fd, self._msgs, n, _MSG_DONTWAIT, None)
            if got >= 0:
                break
            err = self._get_errno()
            if err != _errno.EINTR:
                return 0 if err in (_errno.EAGAIN, _errno.EWOULDBLOCK) else -err
        else:
            return 0
        return got


_SO_MEMINFO = getattr(_socket, "SO_MEMINFO", 55)     # asm-generic/socket.h


class ConntrackSocket:
    """A non-blocking ctnetlink event subscription.

    ``groups`` are NFNLGRP_CONNTRACK_* numbers (default NEW and DESTROY; add
    NFNLGRP_CONNTRACK_UPDATE for update events).  ``rcvbuf`` is the receive
    buffer wanted in bytes; the attribute ``rcvbuf`` is what the kernel granted
    (getsockopt SO_RCVBUF, which counts the kernel's overhead too).
    NETLINK_BROADCAST_ERROR is set so that the kernel learns about failed
    deliveries and, for DESTROY events, redelivers them later
    (nf_conntrack's reliable event delivery).
    """

    BUFSIZE = 4 << 20          # one batch of datagrams, received back to back
    MAX_DATAGRAM = 1 << 16     # room kept free for the next datagram

    def __init__(self, rcvbuf: int = 64 * 1024 * 1024,
                 groups=(NFNLGRP_CONNTRACK_NEW, NFNLGRP_CONNTRACK_DESTROY),
                 multi: bool = True):
        what = "cannot subscribe to conntrack events (netlink)"
        sock = _open_netlink(what)
        try:
            granted = _set_rcvbuf(sock, int(rcvbuf))
            mask = 0
            for g in groups:
                if not 1 <= g <= 32:
                    raise ValueError(f"netlink group out of range: {g}")
                mask |= 1 << (g - 1)
            sock.bind((0, mask))
            sock.setsockopt(SOL_NETLINK, NETLINK_BROADCAST_ERROR, 1)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise SourceError(_errno_message(what, e.errno or 0)) from e
        except BaseException:
            sock.close()
            raise
        self._setup(sock, granted, tuple(groups), multi)

    @classmethod
    def over(cls, sock: _socket.socket, multi: bool = True) -> "ConntrackSocket":
        """The receive side over ``sock``, a datagram socket already bound and
        non-blocking (tests: a loopback UDP socket standing in for netlink)."""
        self = cls.__new__(cls)
        self._setup(sock, sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF), (), multi)
        return self

    def _setup(self, sock, rcvbuf: int, groups: tuple, multi: bool) -> None:
        self._sock = sock
        self.rcvbuf = rcvbuf
        self.groups = groups
        self._multi = MultiRecv.create() if multi else None
        # the per-datagram loop's buffer, where recvmmsg is not to be had
        self._buf = bytearray(self.BUFSIZE if self._multi is None else 0)
        self._view = memoryview(self._buf)
        self._overrun_pending = False
        self.truncated = 0     # datagrams larger than a receive slot (dropped)

    def fileno(self) -> int:
        return self._sock.fileno()

    def set_groups(self, groups) -> None:
        """Subscribe to ``groups`` (NFNLGRP_CONNTRACK_* numbers) instead of
        the ones held, on the same socket: what is queued stays queued.
        Raises SourceError when the kernel refuses (``groups`` then says
        what is held)."""
        held = set(self.groups)
        changes = [(NETLINK_DROP_MEMBERSHIP, g) for g in sorted(held - set(groups))]
        changes += [(NETLINK_ADD_MEMBERSHIP, g) for g in sorted(set(groups) - held)]
        try:
            for opt, g in changes:
                self._sock.setsockopt(SOL_NETLINK, opt, g)
                held.symmetric_difference_update((g,))
        except OSError as e:
            raise SourceError(_errno_message("cannot change the conntrack event groups",
                                             e.errno or 0)) from e
        finally:
            self.groups = tuple(sorted(held))

    def queued_bytes(self) -> int | None:
        """What the datagrams waiting in the receive queue take of the
        receive buffer (SO_MEMINFO, SK_MEMINFO_RMEM_ALLOC), None where the
        kernel cannot say (before Linux 4.12)."""
        try:
            return _struct.unpack_from("I", self._sock.getsockopt(
                _socket.SOL_SOCKET, _SO_MEMINFO, 36))[0]
        except OSError:
            return None

    def close(self) -> None:
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def recv(self, max_datagrams: int = 1024) -> Datagrams:
        """Receive up to ``max_datagrams`` queued datagrams without blocking,
        into one buffer (valid until the next call).  An empty batch when
        nothing is queued.

        Raises NetlinkOverrun when the kernel reported ENOBUFS (events were
        lost).  Datagrams received before the error in the same call are
        returned first; the overrun is raised on the next call.
        """
        if self._overrun_pending:
            self._overrun_pending = False
            raise NetlinkOverrun("netlink receive buffer overrun: conntrack events were lost")
        if self._multi is not None:
            return self._recv_multi(max_datagrams)
        view = self._view
        recv_into = self._sock.recv_into
        limit = len(view) - self.MAX_DATAGRAM
        pos = 0
        dropped = 0
        starts: list = []
        ends: list = []
        for _ in range(max_datagrams):
            if pos > limit:
                break
            try:
                # MSG_TRUNC: the real length even if the datagram did not fit
                got = recv_into(view[pos:], 0, _socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == _errno.ENOBUFS:
                    if pos == 0:
                        raise NetlinkOverrun(
                            "netlink receive buffer overrun: conntrack events were lost") from e
                    self._overrun_pending = True
                    break
                raise SourceError(f"netlink recv: {e}") from e
            if got > len(view) - pos:
                self.truncated += 1          # cut short: drop it whole
                dropped += 1
                continue
            starts.append(pos)
            ends.append(pos + got)
            pos += (got + 3) & ~3            # datagrams start 4-aligned
        return Datagrams(view[:pos], starts, ends, 0, dropped)

    def _recv_multi(self, max_datagrams: int) -> Datagrams:
        """recv with recvmmsg: the same results and errors.  An error after
        some datagrams is kept by the kernel and returned by the next call,
        which raises it (as the per-datagram loop does)."""
        mr = self._multi
        got = mr.recv(self._sock.fileno(), max_datagrams)
        if got < 0:
            if got == -_errno.ENOBUFS:
                raise NetlinkOverrun(
                    "netlink receive buffer overrun: conntrack events were lost")
            raise SourceError(f"netlink recv: {_os.strerror(-got)}")
        if not got:
            return Datagrams(mr.view[:0], [], [])
        np = _numpy()
        head = mr.HEAD
        lens, flags = mr.arrays(np, got)
        if flags.any():
            # some msg_flags set (MSG_TRUNC: longer than a slot; rare): those
            # datagrams are dropped whole, counted as truncated and malformed
            keep = np.flatnonzero((flags & _MSG_TRUNC) == 0)
            lens = lens[keep]
        else:
            keep = np.arange(got)
        dropped = got - len(keep)
        self.truncated += dropped
        starts = keep * head                # datagram i sits at i * HEAD
        ends = starts + lens
        if not len(starts):
            view = mr.view[:0]
        elif int(lens.max()) > head:
            # some datagram went on into its overflow slot (rare): the batch
            # is decoded from a copy with every datagram whole
            parts: list = []
            starts, ends = starts.tolist(), ends.tolist()
            off = 0
            for k, (s, e) in enumerate(zip(starts, ends)):
                d = mr.datagram(s // head, e - s)
                pad = -len(d) % 4
                parts.append(d + bytes(pad) if pad else d)
                starts[k] = off
                ends[k] = off + len(d)
                off += len(d) + pad
            view = b"".join(parts)
            head = 0
        else:
            # every datagram within its slot: the decoder may read the batch
            # as a matrix of slots (the last one whole)
            view = mr.view[:int(starts[-1]) + head]
        return Datagrams(view, starts, ends, head, dropped)


def _numpy():
    global _np
    if _np is None:
        import numpy
        _np = numpy
    return _np


_np = None


def dump_table(family: int = 0, timeout: float = 30.0) -> list:
    """Read the whole conntrack table (IPCTNL_MSG_CT_GET with NLM_F_DUMP).

    ``family`` 0 dumps IPv4 and IPv6, or AF_INET / AF_INET6 for one.
    Returns the entries as EV_DUMP CtEvents.  Raises SourceError when the
    kernel refuses (EPERM: needs CAP_NET_ADMIN) or stops answering within
    ``timeout`` seconds per datagram.
    """
    what = "cannot dump the conntrack table (netlink)"
    sock = _open_netlink(what)
    try:
        _set_rcvbuf(sock, 8 << 20)
        sock.bind((0, 0))
        sock.settimeout(timeout)
        seq = (id(sock) ^ _os.getpid()) & 0x7FFFFFFF or 1
        sock.send(dump_request(family, seq))
        events = []
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        # bounded: a datagram holds at least one entry, the table is finite
        for _ in range(1 << 26):
            n = sock.recv_into(view, 0, _socket.MSG_TRUNC)
            if n > len(buf):
                raise SourceError(f"{what}: a {n}-byte datagram did not fit the buffer")
            res = decode(view[:n])
            if res.errors:
                err = next((e for e in res.errors if e), 0)
                if err:
                    raise SourceError(_errno_message(what, err))
            events.extend(res.events)
            if res.done:
                return events
        raise SourceError(f"{what}: no NLMSG_DONE")
    except _socket.timeout as e:
        raise SourceError(f"{what}: no answer from the kernel within {timeout} s") from e
    except OSError as e:
        raise SourceError(_errno_message(what, e.errno or 0)) from e
    finally:
        sock.close()


SYSCTL = "/proc/sys/net/netfilter/"


def read_sysctl(name: str) -> int | None:
    """A net.netfilter sysctl of the current network namespace (e.g.
    ``nf_conntrack_events``), or None where it does not exist."""
    try:
        with open(SYSCTL + name) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None
