"""The export sinks: messages from an encoder -> one collector.

Strategy: the encoders are sans-IO and return bytes; this is the only place
they meet a socket.  One sink per configured collector: ``UdpCollector``
(NetFlow v5/v9/IPFIX over UDP) or ``TcpCollector`` (IPFIX over TCP, RFC 7011
section 10.4).  The sockets are non-blocking, so a dead or slow collector
never stalls the daemon's loop; every failure is counted (``send_errors``,
``last_error``) and the next ``send`` simply tries again.  Nothing here
raises on the data path.

What both share (``_Sink``): the collector's address, resolved once when the
sink is made (``ExportError`` if it does not resolve), and the export source
address: when configured and an address of this host, the socket is bound to
it (port 0) so messages leave from it.  When it is not local (EADDRNOTAVAIL)
or of the other address family, the socket is left unbound (the kernel
chooses) and ``bind_problem`` says why, for the daemon to log once.

``TcpCollector`` is sans-threads and driven by the daemon's loop: ``send``
queues whole messages in a bounded buffer and writes what the socket takes;
the loop selects for writability on ``fileno()`` while ``wants_write()``,
calls ``on_writable()`` when it is, and calls ``tick()`` at least by
``next_wakeup()`` for the (re)connection with exponential backoff.  See the
class for the stream rules (whole messages, templates first on every
connection).
"""

from __future__ import annotations

import errno
import ipaddress
import select
import socket
import time
from collections import deque
from itertools import islice
from typing import Callable, Iterable

from nfflowd.errors import NfflowdError


class ExportError(NfflowdError):
    """A collector cannot be set up at all (its host name does not resolve)."""


def _errname(e: OSError | int) -> str:
    """``ECONNREFUSED`` for an OSError or an errno number."""
    n = e if isinstance(e, int) else e.errno
    if n:
        return errno.errorcode.get(n, str(n) if isinstance(e, int) else str(e))
    return str(e)


def resolve(host: str, port: int, socktype: int = socket.SOCK_DGRAM) -> tuple:
    """(family, sockaddr) of a collector; ``ExportError`` if it does not
    resolve (``check`` asks this too)."""
    try:
        ai = socket.getaddrinfo(host, port, 0, socktype)
    except (socket.gaierror, UnicodeError) as e:
        raise ExportError(f"collector {host}:{port}: cannot resolve: {e}") from None
    return ai[0][0], ai[0][4]


class _Sink:
    """The collector address and the export source, for either transport."""

    SOCKTYPE = socket.SOCK_DGRAM

    def __init__(self, host: str, port: int, source: str | None = None):
        self.host = host
        self.port = port
        self.source = source
        self.family, self.sockaddr = resolve(host, port, self.SOCKTYPE)
        self.send_errors = 0
        self.last_error: str | None = None
        self.bound = False
        self.bind_problem: str | None = None

    def _bind(self, sock: socket.socket) -> None:
        """Bind ``sock`` to the export source (port 0) if there is one; sets
        ``bound`` and ``bind_problem``."""
        source = self.source
        if source is None:
            return
        self.bound = False
        try:
            ip = ipaddress.ip_address(source)
        except ValueError:
            self.bind_problem = f"export source {source!r} is not an IP address"
            return
        fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        if fam != self.family:
            self.bind_problem = (f"export source {source} is IPv{ip.version} but the collector "
                                 f"{self.host} is not: the kernel chooses the source address")
            return
        try:
            sock.bind((source, 0))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                self.bind_problem = (f"export source {source} is not an address of this host: "
                                     "the kernel chooses the source address")
            else:
                self.bind_problem = f"cannot bind to export source {source}: {e.strerror}"
            return
        self.bound = True
        self.bind_problem = None

    def _error(self, e: OSError | int) -> None:
        self.send_errors += 1
        self.last_error = _errname(e)


class UdpCollector(_Sink):
    def __init__(self, host: str, port: int, source: str | None = None):
        super().__init__(host, port, source)
        self.datagrams_sent = 0
        self.bytes_sent = 0
        self.records_sent = 0
        # back-pressure: a slow or absent collector never blocks the loop;
        # what could not be sent is counted here
        self.datagrams_dropped = 0
        self.records_dropped = 0
        self.sock = socket.socket(self.family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self._bind(self.sock)
        # Connected UDP: ICMP errors (port unreachable...) come back as errors
        # on later sends, which are counted (``send``).  connect() itself only
        # fails when there is no route; then the datagrams are dropped
        # (counted) and connect is retried at each send.
        self._connected = self._try_connect()

    def _try_connect(self) -> bool:
        try:
            self.sock.connect(self.sockaddr)
            return True
        except OSError as e:
            self._error(e)
            return False

    def send(self, datagram: bytes, records: int = 0) -> bool:
        """Send one datagram (``records``: how many flow records it carries, for
        the counters).  Returns whether the kernel took it; never raises.
        Exact accounting: every datagram given here is counted either sent
        (``datagrams_sent``/``records_sent``: handed to the kernel) or
        dropped (``datagrams_dropped``/``records_dropped``: not handed)."""
        if not self._connected:
            self._connected = self._try_connect()
            if not self._connected:
                return self._dropped(records)
        sock = self.sock
        try:
            try:
                sock.send(datagram)
            except ConnectionRefusedError:
                # An ICMP port unreachable for an EARLIER datagram (the
                # collector's port was closed): the kernel reports it at this
                # send and does not send this datagram, clearing the error.
                # Counted as an error, and this datagram is sent again, once:
                # it is not lost (nor its sequence number) if the collector is
                # back.
                self._error(errno.ECONNREFUSED)
                sock.send(datagram)
        except OSError as e:
            # ENETUNREACH, EHOSTUNREACH, EAGAIN/ENOBUFS (socket buffer full),
            # EMSGSIZE, ECONNREFUSED again: the kernel did not take it;
            # counted; the next send tries again.
            self._error(e)
            return self._dropped(records)
        self.datagrams_sent += 1
        self.bytes_sent += len(datagram)
        self.records_sent += records
        return True

    def _dropped(self, records: int) -> bool:
        self.datagrams_dropped += 1
        self.records_dropped += records
        return False

    def stats(self) -> dict:
        return {"datagrams_sent": self.datagrams_sent, "records_sent": self.records_sent,
                "datagrams_dropped": self.datagrams_dropped,
                "records_dropped": self.records_dropped,
                "bytes_sent": self.bytes_sent, "send_errors": self.send_errors,
                "last_error": self.last_error}

    def close(self) -> None:
        self.sock.close()


# TcpCollector states
DISCONNECTED = "disconnected"   # no socket; the next attempt is at next_wakeup()
CONNECTING = "connecting"       # non-blocking connect() in progress
CONNECTED = "connected"
CLOSED = "closed"               # close() was called; send() drops

_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK, errno.EINTR)
_IOV = 64                       # messages handed to one sendmsg()
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)

OnConnect = Callable[[bytes | None], "bytes | Iterable[bytes] | None"]


class TcpCollector(_Sink):
    """IPFIX over TCP to one collector: a bounded queue of whole messages and
    a non-blocking socket that is (re)connected with exponential backoff.

    Stream rules:

    - Messages are never cut: the queue holds whole messages, the offset into
      the first one is kept across partial writes, and only messages not yet
      started are ever dropped.  After a disconnection the message that was
      half written is sent again whole, from its start, on the next
      connection (the old connection's stream is gone).
    - Bounded: the queued messages never total more than ``buffer_limit``
      bytes.  A message that would exceed it makes room by dropping the
      OLDEST queued messages not yet started (counted in
      ``messages_dropped``/``records_dropped``); if it still does not fit
      (it alone is larger than the limit, or the started message and the
      connection preamble leave no room) it is itself dropped and ``send``
      returns False.
    - Templates first on every connection (RFC 7011 section 10.4): when
      a connection is established ``on_connect(head)`` is called, ``head``
      being the first queued message (sent next, from its start) or None;
      whatever it returns (bytes, an iterable of bytes, or None) is put in
      front of the whole queue, so it precedes every data message queued
      before the reconnection, which refer to templates the new connection
      has not seen.  These preamble messages are never dropped for room, are
      not counted in ``messages_sent`` (only in ``bytes_sent`` and
      ``preamble_sent``) and, if the connection breaks before they are
      written, are discarded (the next connection gets new ones).  For IPFIX:
      ``on_connect=lambda head: encoder.templates_message(now_ms(), before=head)``.
      An ``on_connect`` that raises is counted as an error and the
      connection is closed and retried with backoff (never data without
      templates).
    - Written is sent: a message is counted sent once the kernel took all of
      it.  Messages in the kernel's send buffer when the connection breaks
      are lost without being counted (TCP does not tell); a collector that
      closes the connection is noticed before the next write (EOF on the
      socket), which keeps that loss small.

    Driving it (sans threads, from the daemon's loop):

    - ``send(message, records)`` queues and writes what the socket takes; it
      also starts a connection when the backoff has elapsed.  Never blocks,
      never raises.
    - while ``wants_write()`` (connecting, or connected with data queued):
      select ``fileno()`` for writing, and call ``on_writable()`` when it is.
    - ``tick(now)`` at least at ``next_wakeup()`` (the next connection
      attempt, or the connect timeout) and periodically: it (re)connects,
      notices a collector that closed the connection, and writes.
    - ``close(timeout)`` at exit: tries to flush for at most ``timeout``
      seconds, then counts what is left as dropped.

    Time is ``clock()`` (monotonic seconds) unless ``now`` is given.

    Counters: ``messages_sent``/``records_sent`` (data messages wholly
    written), ``bytes_sent`` (every byte written, preambles included),
    ``messages_dropped``/``records_dropped`` (for room, too big, or left at
    close), ``connects``, ``disconnects`` (established connections lost),
    ``send_errors`` (failed connection attempts, write errors, a failing
    ``on_connect``), ``last_error`` (``ECONNREFUSED``, ``ETIMEDOUT`` for the
    connect timeout, ``EOF: ...`` when the collector closed).  Every message
    given to ``send`` is eventually sent, dropped or still queued.
    """

    SOCKTYPE = socket.SOCK_STREAM

    def __init__(self, host: str, port: int, source: str | None = None,
                 buffer_limit: int = 4 << 20, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0, on_connect: OnConnect | None = None,
                 connect_timeout: float = 10.0, clock: Callable[[], float] = time.monotonic):
        if buffer_limit <= 0:
            raise ValueError("buffer_limit must be > 0")
        if not 0 < backoff_initial <= backoff_max:
            raise ValueError("backoff: 0 < backoff_initial <= backoff_max")
        if connect_timeout <= 0:
            raise ValueError("connect_timeout must be > 0")
        super().__init__(host, port, source)
        self.buffer_limit = buffer_limit
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.on_connect = on_connect
        self._clock = clock
        self.sock: socket.socket | None = None
        self.state = DISCONNECTED
        # [message, records, preamble] - preamble entries are at the front.
        self._queue: deque = deque()
        self._queued_bytes = 0
        self._offset = 0                # bytes of _queue[0] already written
        self._backoff = backoff_initial
        self._next_attempt = clock()    # first attempt on the first send/tick
        self._connect_deadline = 0.0
        self.messages_sent = 0
        self.records_sent = 0
        self.bytes_sent = 0
        self.messages_dropped = 0
        self.records_dropped = 0
        self.preamble_sent = 0
        self.connects = 0
        self.disconnects = 0

    # -- the daemon's side ---------------------------------------------------------
    def send(self, message: bytes, records: int = 0) -> bool:
        """Queue one whole message (``records``: the flow records it carries)
        and write what the socket takes.  False if it was dropped (too big for
        the buffer, or closed); True once queued (it may still be dropped
        later for room, which is counted).  Never raises, never blocks."""
        n = len(message)
        if self.state == CLOSED or not self._make_room(n):
            self.messages_dropped += 1
            self.records_dropped += records
            return False
        self._queue.append([message, records, False])
        self._queued_bytes += n
        self._pump(self._clock())
        return True

    def tick(self, now: float | None = None) -> None:
        """(Re)connect when due, notice a closed connection, write what is
        queued.  Call it at least at ``next_wakeup()``."""
        if self.state == CLOSED:
            return
        now = self._clock() if now is None else now
        if self.state == CONNECTED and not self._queue:
            self._check_eof(now)
        self._pump(now)

    poll = tick

    def on_writable(self) -> None:
        """The socket selected writable: finish the connect, write."""
        self._pump(self._clock())

    def fileno(self) -> int:
        """The socket's descriptor, -1 without one (only select it while
        ``wants_write()``, which implies a socket)."""
        return self.sock.fileno() if self.sock is not None else -1

    def wants_write(self) -> bool:
        """Whether to select ``fileno()`` for writing: a connect is in
        progress, or data is queued on an established connection."""
        return self.state == CONNECTING or (self.state == CONNECTED and bool(self._queue))

    def next_wakeup(self) -> float | None:
        """When ``tick`` is due next (clock time): the next connection attempt
        or the connect timeout; None when connected (or closed)."""
        if self.state == DISCONNECTED:
            return self._next_attempt
        if self.state == CONNECTING:
            return self._connect_deadline
        return None

    @property
    def connected(self) -> bool:
        return self.state == CONNECTED

    @property
    def queued_messages(self) -> int:
        return sum(1 for e in self._queue if not e[2])

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def stats(self) -> dict:
        return {"messages_sent": self.messages_sent, "records_sent": self.records_sent,
                "bytes_sent": self.bytes_sent, "messages_dropped": self.messages_dropped,
                "records_dropped": self.records_dropped, "connects": self.connects,
                "disconnects": self.disconnects, "send_errors": self.send_errors,
                "last_error": self.last_error, "queued_messages": self.queued_messages,
                "queued_bytes": self._queued_bytes, "state": self.state}

    def close(self, timeout: float = 1.0) -> None:
        """Try to write what is queued for at most ``timeout`` seconds (one
        immediate connection attempt if disconnected, backoff or not), then
        close; data messages left are counted as dropped."""
        if self.state == CLOSED:
            return
        deadline = self._clock() + max(0.0, timeout)
        if timeout > 0 and self._queue and self.state == DISCONNECTED:
            self._next_attempt = self._clock()
        self._pump(self._clock())
        while self._queue and self.state in (CONNECTING, CONNECTED):
            left = deadline - self._clock()
            if left <= 0:
                break
            p = select.poll()
            p.register(self.sock.fileno(), select.POLLOUT)
            p.poll(max(1, int(left * 1000)))   # error/hang-up also wakes it
            self._pump(self._clock())
            if self.state == CONNECTING and self._clock() >= self._connect_deadline:
                break
        for _, records, preamble in self._queue:
            if not preamble:
                self.messages_dropped += 1
                self.records_dropped += records
        self._queue.clear()
        self._queued_bytes = 0
        self._offset = 0
        if self.sock is not None:
            if self.state == CONNECTED:
                self.disconnects += 1
            self.sock.close()
            self.sock = None
        self.state = CLOSED

    # -- queue -----------------------------------------------------------------
    def _make_room(self, n: int) -> bool:
        """Drop the oldest droppable messages until ``n`` more bytes fit;
        False (nothing dropped) if they cannot fit at all."""
        q = self._queue
        # Never dropped: the preamble (at the front) and a started message.
        keep = 0
        while keep < len(q) and q[keep][2]:
            keep += 1
        if self._offset and keep == 0:
            keep = 1
        pinned = sum(len(q[i][0]) for i in range(keep))
        if pinned + n > self.buffer_limit:
            return False
        while self._queued_bytes + n > self.buffer_limit:
            msg, records, _ = q[keep]
            del q[keep]
            self._queued_bytes -= len(msg)
            self.messages_dropped += 1
            self.records_dropped += records
        return True

    # -- connection --------------------------------------------------------------
    def _pump(self, now: float) -> None:
        if self.state == DISCONNECTED:
            if now < self._next_attempt:
                return
            self._start_connect(now)
        if self.state == CONNECTING:
            self._check_connect(now)
        if self.state == CONNECTED and self._queue:
            self._flush(now)

    def _start_connect(self, now: float) -> None:
        try:
            sock = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as e:            # EMFILE, ENOBUFS...
            self._connect_failed(now, e)
            return
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            self._bind(sock)
            err = sock.connect_ex(self.sockaddr)
        except OSError as e:
            sock.close()
            self._connect_failed(now, e)
            return
        self.sock = sock
        if err == 0:
            self._connected(now)
        elif err in _IN_PROGRESS:
            self.state = CONNECTING
            self._connect_deadline = now + self.connect_timeout
        else:
            self._connect_failed(now, err)

    def _check_connect(self, now: float) -> None:
        sock = self.sock
        try:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err == 0:
                sock.getpeername()      # ENOTCONN: still in progress
        except OSError as e:
            err = e.errno if e.errno != errno.ENOTCONN else -1
        if err == 0:
            self._connected(now)
        elif err == -1 or err in _IN_PROGRESS:
            if now >= self._connect_deadline:
                self._connect_failed(now, errno.ETIMEDOUT)
        else:
            self._connect_failed(now, err)

    def _connect_failed(self, now: float, e: OSError | int) -> None:
        self._error(e)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.state = DISCONNECTED
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        self._next_attempt = now + self._backoff
        self._backoff = min(self._backoff * 2, self.backoff_max)

    def _connected(self, now: float) -> None:
        self.state = CONNECTED
        self.connects += 1
        self._backoff = self.backoff_initial
        # (here _offset is 0 and the queue holds no preamble: _disconnect)
        if self.on_connect is None:
            return
        head = self._queue[0][0] if self._queue else None
        try:
            out = self.on_connect(head)
            if out is None:
                pre = []
            elif isinstance(out, (bytes, bytearray, memoryview)):
                pre = [bytes(out)]
            else:
                pre = [bytes(m) for m in out]
        except Exception as e:          # a bug in the callback: no data without templates
            self.send_errors += 1
            self.last_error = f"on_connect: {type(e).__name__}: {e}"
            self._disconnect(now, None)
            return
        for m in reversed(pre):
            if m:
                self._queue.appendleft([m, 0, True])
                self._queued_bytes += len(m)
        # The preamble may push the queue over the limit: make room behind it.
        if self._queued_bytes > self.buffer_limit:
            self._make_room(0)

    def _disconnect(self, now: float, e: OSError | int | str | None) -> None:
        """Drop the connection (counted), keep the data, retry after backoff."""
        if isinstance(e, str):
            self.last_error = e
        elif e is not None:
            self._error(e)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.state == CONNECTED:
            self.disconnects += 1
        self.state = DISCONNECTED
        self._offset = 0                # the half-written message goes again, whole
        q = self._queue
        while q and q[0][2]:            # the old connection's preamble
            self._queued_bytes -= len(q.popleft()[0])
        self._schedule(now)

    def _check_eof(self, now: float) -> bool:
        """Whether the collector closed the connection (or reset it): IPFIX
        collectors send nothing, so readable means EOF or an error.
        Disconnects if so."""
        try:
            data = self.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            self._disconnect(now, e)
            return True
        if data:
            return False                # unexpected bytes from the collector: ignored
        self._disconnect(now, "EOF: the collector closed the connection")
        return True

    def _flush(self, now: float) -> None:
        """Write queued messages until the socket is full or the queue empty."""
        if self._check_eof(now):
            return
        q = self._queue
        sock = self.sock
        while q:
            bufs = [memoryview(e[0]) for e in islice(q, _IOV)]
            if self._offset:
                bufs[0] = bufs[0][self._offset:]
            try:
                n = sock.sendmsg(bufs, (), _SEND_FLAGS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:        # EPIPE, ECONNRESET, ETIMEDOUT...
                self._disconnect(now, e)
                return
            if n == 0:
                return
            self.bytes_sent += n
            while n:
                e = q[0]
                rest = len(e[0]) - self._offset
                if n < rest:
                    self._offset += n
                    return              # the socket took less: it is full
                n -= rest
                q.popleft()
                self._offset = 0
                self._queued_bytes -= len(e[0])
                if e[2]:
                    self.preamble_sent += 1
                else:
                    self.messages_sent += 1
                    self.records_sent += e[1]
