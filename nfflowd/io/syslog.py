"""The syslog mirror: flow-tools CSV lines -> syslog messages -> a socket.

Strategy: formatting is sans-IO (``SyslogFormatter``: the time and the pid are
passed in); only ``SyslogSink`` touches sockets.  Two wire formats:

- local unix datagram socket (/dev/log): what glibc's syslog(3) sends, without
  hostname and without a trailing newline or NUL::

      <182>Jul 30 11:14:40 nfflowd[1234]: 1248952480,737235000,...

- UDP to host:port: RFC 3164, the hostname after the timestamp::

      <182>Jul 30 11:14:40 gw1 nfflowd[1234]: 1248952480,737235000,...

The timestamp is local time, month names in English whatever the locale, the
day space-padded ("Jul  3"), as syslog(3) does.

A batch's lines are made at once (``flowtools.csv_block``: the header and
the batch-wide fields once, then what differs) and sent from that block:
with sendmmsg(2) over a unix socket, one send per line over UDP (see
``Sendmmsg``).  Still one datagram per line.

The sink never raises on the data path.  Sends are non-blocking; a line that
cannot be sent now (the socket queue full, ENOBUFS, the socket not there
because syslog is not running, a refused UDP port) stays in a bounded backlog
(``syslog.backlog`` lines, kept in their blocks: ``Backlog``); lines beyond
the bound are dropped (oldest first) and counted in ``dropped``.  The
backlog drains as fast as syslog reads: the daemon's loop selects the socket
for writing while ``wants_write()`` and calls ``on_writable()`` (at most
``DRAIN_CHUNK`` lines a call, so netlink waits for no long drain); a socket
that is not there is tried again at every ``flush``
(the daemon's flush deadline, ``export.flush_interval``).

Given a logger, the sink says once per episode that syslog cannot be reached
(and once that it can again, with the lines dropped meanwhile), and once per
episode that the backlog is full and lines are being dropped.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections import deque
from typing import Iterable

from nfflowd.flowtools import CsvBlock, csv_block

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5,
    "lpr": 6, "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20,
    "local5": 21, "local6": 22, "local7": 23,
}
PRIORITIES = {
    "emerg": 0, "alert": 1, "crit": 2, "err": 3, "error": 3, "warning": 4,
    "warn": 4, "notice": 5, "info": 6, "debug": 7,
}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
           "Nov", "Dec")

# Lines held while syslog cannot take them: a 200k-connection table flush
# makes 600k lines (3 per translated connection).  About 200 bytes a line.
DEFAULT_BACKLOG = 600_000
# Lines sent at most per flush (on_writable) call: a receiver as fast as the
# daemon would otherwise keep the loop (and netlink) waiting for one long drain.
DRAIN_CHUNK = 4096
# An episode of unavailability ends once lines have gone through with no
# failure for this many seconds (a refused UDP port fails every other send).
EPISODE_QUIET = 10.0


def _code(value, table, what, hi) -> int:
    if isinstance(value, str):
        try:
            return table[value.lower()]
        except KeyError:
            raise ValueError(f"unknown syslog {what} {value!r}") from None
    v = int(value)
    if not 0 <= v <= hi:
        raise ValueError(f"syslog {what} out of range: {v}")
    return v


def pri(facility="local6", priority="info") -> int:
    """The PRI value: facility*8 + severity (names or numbers)."""
    return _code(facility, FACILITIES, "facility", 23) * 8 + _code(priority, PRIORITIES,
                                                                    "priority", 7)


def timestamp(now: float) -> str:
    """RFC 3164 / syslog(3) timestamp "Mmm dd hh:mm:ss" of ``now`` (epoch s), local time."""
    t = time.localtime(now)
    return f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


class SyslogFormatter:
    """Sans-IO formatting of syslog messages.

    ``hostname`` None gives the local (/dev/log) form, a string the RFC 3164
    form with that hostname.
    """

    def __init__(self, facility="local6", priority="info", ident="nfflowd",
                 pid: int = 0, hostname: str | None = None):
        self.pri = pri(facility, priority)
        self.ident = ident
        self.pid = pid
        self.hostname = hostname
        self._prefix_sec = None
        self._prefix = b""
        self._prefix_text = ""

    def prefix_text(self, now: float) -> str:
        """Everything before the message, for a message sent at ``now``, as text."""
        sec = int(now)
        if sec != self._prefix_sec:
            host = f"{self.hostname} " if self.hostname else ""
            self._prefix_text = f"<{self.pri}>{timestamp(sec)} {host}{self.ident}[{self.pid}]: "
            self._prefix = self._prefix_text.encode()
            self._prefix_sec = sec
        return self._prefix_text

    def prefix(self, now: float) -> bytes:
        """Everything before the message, for a message sent at ``now``."""
        self.prefix_text(now)
        return self._prefix

    def format(self, message: str, now: float) -> bytes:
        return self.prefix(now) + message.encode()

    def format_many(self, messages: Iterable[str], now: float) -> list[bytes]:
        p = self.prefix_text(now)
        return [(p + m).encode() for m in messages]     # one copy less than p + m.encode()


def parse_address(address: str):
    """"/path" -> (AF_UNIX, path); "host:port" or "[v6]:port" -> (None, (host, port))."""
    if address.startswith("/"):
        return socket.AF_UNIX, address
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected a unix socket path or host:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return None, (host, int(port))


# Errors after which the line is kept and retried later (the receiver is not
# there or not keeping up) rather than dropped.
_RETRY = {errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS, errno.ENOENT, errno.ECONNREFUSED,
          errno.ENOTCONN, errno.EDESTADDRREQ, errno.ENETUNREACH, errno.EHOSTUNREACH,
          errno.ENETDOWN, errno.EHOSTDOWN, errno.ECONNRESET}
# ... of which these say the socket queue is full (flow control, not an error)
_FULL = {errno.EAGAIN, errno.EWOULDBLOCK}

_MEANING_DOWN = ("flow-tools lines wait in the backlog (syslog.backlog lines) and go once "
                 "syslog is back; lines beyond it are dropped and counted (syslog_dropped)")


class Backlog:
    """The lines waiting to be sent, oldest first, kept in the blocks they
    came in (``flowtools.CsvBlock``): a line becomes a message of its own
    only as it is sent.  ``len``, ``bool``, ``backlog[i]`` (line i, bytes)."""

    def __init__(self):
        self._blocks: deque[list] = deque()   # [block, its first line waiting, prepared]
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __getitem__(self, i: int) -> bytes:
        if i < 0:
            i += self._len
        for block, start, _ in self._blocks:
            if 0 <= i < len(block) - start:
                return block.line(start + i)
            i -= len(block) - start
        raise IndexError("backlog index out of range")

    def add(self, block: CsvBlock, start: int = 0, prepared=None) -> None:
        """Lines ``start`` on of ``block`` wait after the others
        (``prepared``: what the sender made of the block, if anything)."""
        if len(block) > start:
            self._blocks.append([block, start, prepared])
            self._len += len(block) - start

    def oldest(self) -> list:
        """[block, its first line waiting, prepared] of the oldest lines
        (the sender may set ``prepared``)."""
        return self._blocks[0]

    def drop(self, k: int) -> None:
        """The ``k`` oldest lines are gone (sent or dropped)."""
        self._len -= k
        blocks = self._blocks
        while k:
            entry = blocks[0]
            left = len(entry[0]) - entry[1]
            if k < left:
                entry[1] += k
                return
            blocks.popleft()
            k -= left

    def clear(self) -> None:
        self._blocks.clear()
        self._len = 0


class Sendmmsg:
    """sendmmsg(2) through ctypes: a run of datagrams in one system call.
    ``create`` gives None where libc has none or pointers are not 64-bit.

    Only for unix sockets: there every error is the datagram's own and comes
    again when it is sent again, so a run that stops short is sent on from
    the datagram that stopped it, whose error then comes back.  Over UDP a
    refused port is told asynchronously, once: sendmmsg would lose it after
    the first datagram of a call (the kernel reports errors only there)."""

    MAX = 1024          # UIO_MAXIOV: datagrams per call
    # Fewer lines than this go one send each: preparing the array costs
    # about what 50 sends cost in Python (bench/README.md)
    MIN_RUN = 64

    @classmethod
    def create(cls):
        try:
            import ctypes
            if ctypes.sizeof(ctypes.c_void_p) != 8:
                return None
            fn = ctypes.CDLL(None, use_errno=True).sendmmsg
            return cls(ctypes, fn)
        except (OSError, AttributeError, ImportError):
            return None

    def __init__(self, ctypes, fn):
        fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
        fn.restype = ctypes.c_int
        self._fn = fn
        self._get_errno = ctypes.get_errno
        cast, void_p = ctypes.cast, ctypes.c_void_p
        # where a bytes object's bytes are (b"" has a terminating NUL there too)
        self._address = lambda b: cast(b, void_p).value

    def prepare(self, block: CsvBlock):
        """The struct mmsghdr array of ``block``'s lines (each a head iovec
        and a body iovec, or only a body without head) and its address,
        with what it points into, for ``send``."""
        import numpy as np
        n = len(block)
        ends = np.array(block.ends, np.uint64)
        starts = np.zeros(n, np.uint64)
        starts[1:] = ends[:-1]
        per = 2 if block.head else 1
        iov = np.empty((n, per, 2), np.uint64)     # struct iovec: base, len
        if block.head:
            iov[:, 0, 0] = self._address(block.head)
            iov[:, 0, 1] = len(block.head)
        iov[:, -1, 0] = starts + np.uint64(self._address(block.data))
        iov[:, -1, 1] = ends - starts
        # struct mmsghdr (LP64): name, namelen, iov, iovlen, control,
        # controllen, flags, msg_len: eight 8-byte words
        hdr = np.zeros((n, 8), np.uint64)
        hdr[:, 2] = (np.uint64(iov.__array_interface__["data"][0])
                     + np.arange(n, dtype=np.uint64) * np.uint64(16 * per))
        hdr[:, 3] = per
        return hdr.__array_interface__["data"][0], (hdr, iov, block)

    def send(self, fd: int, prepared, start: int, stop: int) -> tuple[int, int]:
        """Send the prepared datagrams ``start`` to ``stop`` (excluded): how
        many went, and the errno of the one that did not (0: all went)."""
        base = prepared[0]
        i = start
        while i < stop:
            r = self._fn(fd, base + 64 * i, min(stop - i, self.MAX), 0)
            if r < 0:
                return i - start, self._get_errno()
            i += r
        return i - start, 0


class SyslogSink:
    """Sends messages to a local unix datagram socket or to host:port over UDP.

    Counters: ``sent``, ``dropped`` (lines lost past the backlog bound or
    too large to send), ``send_errors`` (failed sends: not those that found
    the socket queue full, which wait for writability), ``unavailable``
    (connect attempts that found no listener), ``last_error``; the backlog's
    length is ``stats()["backlog"]``.  ``log``: a structlog-style logger for
    the episode messages (None: silent).
    """

    def __init__(self, address: str = "/dev/log", facility="local6", priority="info",
                 ident: str = "nfflowd", *, pid: int | None = None,
                 hostname: str | None = None, backlog: int = DEFAULT_BACKLOG, log=None):
        self.address = address
        family, target = parse_address(address)
        self._unix = family == socket.AF_UNIX
        self._target = target
        if not self._unix:
            hostname = hostname or socket.gethostname().split(".")[0] or "-"
        else:
            hostname = None
        self.formatter = SyslogFormatter(facility, priority, ident,
                                         os.getpid() if pid is None else pid, hostname)
        self.backlog = Backlog()
        self.max_backlog = backlog
        self.sent = 0
        self.dropped = 0
        self.send_errors = 0
        self.unavailable = 0
        self.last_error: str | None = None
        self.log = log
        self._sock: socket.socket | None = None
        self._resolved = None       # UDP: (family, sockaddr)
        # episodes: syslog unreachable since (monotonic; None: it is not), the
        # last failure, the dropped count when it began; the backlog full
        # (the dropped count when it began; None: not full)
        self._down_since: float | None = None
        self._last_failure = 0.0
        self._down_dropped = 0
        self._full_dropped: int | None = None
        # a send failed with the socket still there (ENOBUFS): no writability
        # wait (the socket may well say writable) until the next flush
        self._hold = False
        self._mmsg = Sendmmsg.create() if self._unix else None

    def open(self) -> bool:
        """Connect now (a daemon starting says at once when syslog is not
        there); whether it could.  Never raises."""
        return self._connect()

    # -- connection ---------------------------------------------------------
    def _connect(self) -> bool:
        if self._sock is not None:
            return True
        try:
            if self._unix:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                addr = self._target
            else:
                if self._resolved is None:
                    host, port = self._target
                    ai = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0]
                    self._resolved = (ai[0], ai[4])
                fam, addr = self._resolved
                s = socket.socket(fam, socket.SOCK_DGRAM)
        except OSError as e:
            self.unavailable += 1
            self._failed(f"{type(e).__name__}: {e}")
            return False
        s.setblocking(False)
        try:
            s.connect(addr)
        except OSError as e:
            s.close()
            self.unavailable += 1
            self._failed(errno.errorcode.get(e.errno, str(e)))
            return False
        self._sock = s
        return True

    def _disconnect(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- episodes --------------------------------------------------------------
    def _failed(self, error: str, waiting: int | None = None) -> None:
        """Syslog could not be reached (``error``; ``waiting`` lines, default
        the backlog's): an episode begins unless one is under way."""
        self.last_error = error
        self._last_failure = time.monotonic()
        if self._down_since is None:
            self._down_since = self._last_failure
            self._down_dropped = self.dropped
            if self.log is not None:
                self.log.warning("syslog_unavailable", address=self.address, error=error,
                                 backlog=len(self.backlog) if waiting is None else waiting,
                                 max_backlog=self.max_backlog,
                                 meaning=_MEANING_DOWN)

    def _reachable(self) -> None:
        """Lines went through (or the socket stayed connected) with no failure
        for EPISODE_QUIET seconds: the episode is over."""
        now = time.monotonic()
        if now - self._last_failure >= EPISODE_QUIET:
            if self.log is not None:
                self.log.info("syslog_available", address=self.address,
                              unavailable_for=round(now - self._down_since, 1),
                              dropped_meanwhile=self.dropped - self._down_dropped,
                              backlog=len(self.backlog))
            self._down_since = None

    def _overflow(self, over: int) -> None:
        if self._full_dropped is None:
            self._full_dropped = self.dropped
            if self.log is not None:
                self.log.warning("syslog_backlog_full", address=self.address,
                                 max_backlog=self.max_backlog, error=self.last_error,
                                 meaning="syslog is not taking the lines as fast as they come: "
                                         "the oldest waiting are dropped and counted "
                                         "(syslog_dropped) until the backlog drains")
        self.dropped += over

    def _drained(self) -> None:
        if self._full_dropped is not None:
            if self.log is not None:
                self.log.info("syslog_backlog_drained", address=self.address,
                              dropped_meanwhile=self.dropped - self._full_dropped)
            self._full_dropped = None

    # -- data path ------------------------------------------------------------
    def send(self, lines: Iterable[str], now: float | None = None) -> None:
        """Queue ``lines`` (formatted with the time ``now``, default the
        clock) and send what can be sent.  Never raises."""
        self._queue(CsvBlock.of(self.formatter.format_many(
            lines, time.time() if now is None else now)))

    def send_csv(self, batch, now: float | None = None) -> None:
        """``send(flowtools.csv_lines(batch), now)`` made faster: the lines
        are made with their syslog header in one block
        (``flowtools.csv_block``) and sent from it; only those the socket
        does not take now are made into single messages for the backlog.
        ``batch`` is a ``flowtools.FtBatch``.  Never raises."""
        self._queue(csv_block(batch, self.formatter.prefix_text(
            time.time() if now is None else now)))

    def _queue(self, block: CsvBlock) -> None:
        bl = self.backlog
        if bl or not len(block) or self._sock is None:
            bl.add(block)                   # after the older lines
            self.flush(max(len(block), DRAIN_CHUNK))
        else:                               # sent at once; what the socket does not take waits
            self._hold = False
            entry = [block, 0, None]
            done, sent, failed = self._send_lines(entry, len(block), queued=False)
            bl.add(block, done, entry[2])
            self._settle(sent, failed)
        over = len(bl) - self.max_backlog
        if over > 0:                    # what waits beyond the bound, oldest first
            self._overflow(over)
            bl.drop(over)

    def _send_lines(self, entry: list, stop: int, queued: bool = True) -> tuple[int, int, bool]:
        """Send the lines of ``entry`` (a ``Backlog`` entry: block, first
        line, prepared) up to ``stop`` while the socket takes them: (lines
        done with: sent, or dropped as never sendable; sent; whether a
        failure said syslog cannot be reached now).  ``queued``: the lines
        are in the backlog (not: they wait nowhere yet)."""
        block, start = entry[0], entry[1]
        mmsg = self._mmsg
        if mmsg is not None and entry[2] is None:
            if stop - start < mmsg.MIN_RUN:
                mmsg = None
            else:
                entry[2] = mmsg.prepare(block)
        i = start
        sent = 0
        while i < stop:
            if mmsg is not None:
                k, err = mmsg.send(self._sock.fileno(), entry[2], i, stop)
            else:
                k, err = self._send_each(block, i, stop)
            i += k
            sent += k
            if not err or err in _FULL:
                break                   # all sent, or the queue is full: on_writable goes on
            self.send_errors += 1
            name = errno.errorcode.get(err, f"[Errno {err}] {os.strerror(err)}")
            if err in _RETRY:
                if err == errno.ENOBUFS:
                    self.last_error = name
                    self._hold = True
                else:
                    # syslogd restarted or went away: reconnect next time
                    self._disconnect()
                    self._failed(name, len(self.backlog) + (0 if queued else len(block) - i))
                return i - start, sent, True
            # EMSGSIZE and the like: this line can never go; drop it.
            self.last_error = name
            self.dropped += 1
            i += 1
        return i - start, sent, False

    def _send_each(self, block: CsvBlock, start: int, stop: int) -> tuple[int, int]:
        """One send per line, lines ``start`` to ``stop`` (excluded): how
        many went, and the errno of the one that did not (0: all went)."""
        send = self._sock.send
        head, data = block.head, block.data
        ends = block.ends[start:stop]
        a = block.ends[start - 1] if start else 0
        for i, b in enumerate(ends):
            try:
                send(head + data[a:b])
            except OSError as e:
                return i, e.errno
            a = b
        return len(ends), 0

    def _settle(self, sent: int, failed: bool) -> None:
        """Count what went; episodes that end with it."""
        self.sent += sent
        if sent and not failed and self._down_since is not None:
            self._reachable()
        if not self.backlog:
            self._drained()

    # -- the daemon's loop ------------------------------------------------------
    def wants_write(self) -> bool:
        """Whether to select ``fileno()`` for writing: lines wait and the
        socket is there (without one, ``flush`` tries to connect)."""
        return bool(self.backlog) and self._sock is not None and not self._hold

    def fileno(self) -> int:
        """The socket's descriptor, -1 without one."""
        return self._sock.fileno() if self._sock is not None else -1

    def on_writable(self) -> None:
        """The socket selected writable: send what it takes (a chunk)."""
        self.flush()

    def flush(self, limit: int | None = None) -> int:
        """Send as much of the backlog (at most ``limit`` lines, default
        DRAIN_CHUNK) as the socket takes now; returns how many messages were
        sent.  Never raises."""
        if not self.backlog:
            if self._down_since is not None and self._sock is not None:
                self._reachable()
            return 0
        self._hold = False
        if not self._connect():
            return 0
        bl = self.backlog
        limit = DRAIN_CHUNK if limit is None else limit
        done = sent = 0
        failed = False
        while done < limit and bl:
            entry = bl.oldest()
            start = entry[1]
            stop = min(len(entry[0]), start + limit - done)
            k, n, failed = self._send_lines(entry, stop)
            bl.drop(k)
            done += k
            sent += n
            if start + k < stop:
                break               # the socket took no more
        self._settle(sent, failed)
        return sent

    def close(self, timeout: float = 5.0) -> None:
        """Send what can be sent within ``timeout`` seconds, waiting for a
        slow syslog daemon to read (nothing already received is lost at a
        shutdown because of a short socket queue), then close.  What remains is
        counted as dropped.  If no syslog daemon listened at any time in this
        run, it does not wait for one to appear (a one-shot ``meter`` on a host
        without /dev/log ends at once)."""
        deadline = time.monotonic() + timeout
        if self.sent == 0 and self._sock is None and not self._connect():
            deadline = 0.0      # no syslog ever listened in this run: no use waiting for one
        try:
            while self.backlog:
                self.flush()
                left = deadline - time.monotonic()
                if not self.backlog or left <= 0:
                    break
                if self._sock is not None:
                    select.select([], [self._sock], [], min(left, 0.1))
                else:
                    time.sleep(min(left, 0.1))
        finally:
            self.dropped += len(self.backlog)
            self.backlog.clear()
            self._disconnect()

    def stats(self) -> dict:
        return {"sent": self.sent, "dropped": self.dropped, "send_errors": self.send_errors,
                "unavailable": self.unavailable, "backlog": len(self.backlog)}
