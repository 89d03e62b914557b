"""Receive pacing: how long the daemon waits before its next netlink round.

Each round has fixed costs, so events trickling in are received in batches:
after a small round the next one waits until about STREAM_BATCH datagrams
have gathered at the rate just seen.  A burst (a table flush) is sent as it
comes and its tail as soon as netlink pauses.  The daemon reads the clock and
the socket, and sleeps; ``Pacer`` and ``Wait`` only take ``now`` and
decide.  The figures behind the constants are in bench/README.md.
"""

from __future__ import annotations

from nfflowd.ctcache import DEAD_MAX

# Datagrams drained from netlink per receive round (one recvmmsg).  Larger
# rounds share the fixed costs of a round and of an export; only a backlog
# fills one.
RECV_BATCH = 2048
# The batch a trickle waits for: a round with fewer datagrams (but some)
# waits, long enough for about STREAM_BATCH at the rate just seen, at most
# STREAM_WAIT, and never long enough to fill more than a quarter of the
# receive buffer at that rate (EVENT_TRUESIZE: what one event datagram takes
# of it, generously).  In a fast stream, a round at less than half the last
# one's rate is the stream ending: no wait, its tail would wait for nothing.
# A steady stream's rate varies that much from round to round (the kernel
# ends timed-out connections in clumps), and a round without a wait after it
# finds a few datagrams, or none and gives the loop a wake-up per datagram:
# it waits, its flows going before the wait (STREAM_FLUSH).
STREAM_BATCH = 1024
STREAM_WAIT = 0.01
# Outside a burst, a steady stream waits up to STREAM_WAIT_STEADY: a few
# thousand events per second come in rounds of hundreds to a batch, which
# share the fixed costs and make runs long enough for the columnar path; its
# records wait that long at most (a trickle's wait for the flush deadline,
# export.flush_interval, is longer).  Not for a fast stream (FAST_RATE): a
# burst slowing down near its end would hold its tail for the whole wait.
STREAM_WAIT_STEADY = 0.25
# A receive call gives the loop back (signals, the control socket,
# deadlines, stream collectors) after RECEIVE_SPAN seconds.
RECEIVE_SPAN = 0.5
# A wait looks at the queue every WAIT_SLICE.  It ends early when a slice
# adds nothing though the rate promised WAIT_EARLY_MIN datagrams or more (the
# stream stopped: its tail goes now), or once the queue holds STREAM_BATCH
# datagrams (a stream speeding up, as a flush does near its end, would
# otherwise fill rounds of RECV_BATCH and hold its tail).  Slower streams
# look every WAIT_SLICE_SLOW, for the batch only: a quiet slice says nothing
# there, and a batch gathering at a slow stream's rate takes tens of ms or
# more.  A look costs a wake-up and a getsockopt: in a steady churn, looks
# every ms were a fifth of nfflowd's CPU.
WAIT_SLICE = 0.00025
WAIT_EARLY_MIN = 8
WAIT_SLICE_SLOW = 0.01
EVENT_TRUESIZE = 2048
# A stream is fast (its waits at most STREAM_WAIT) while in a burst or while
# it brought FAST_RATE datagrams per second or more over the last
# FAST_WINDOW seconds: not a single round's rate, as the kernel ends
# timed-out connections in bursts of its own even in a steady churn.  A
# burst ends when a window brings less than half FAST_RATE (a steady stream
# never leaves netlink quiet for BURST_QUIET).
FAST_WINDOW = 0.2
FAST_RATE = WAIT_EARLY_MIN / WAIT_SLICE
# What a stream brought is exported at least every STREAM_FLUSH seconds (a
# stream slowing down would otherwise hold its tail for many waits); in a
# burst at every wait, so the export overlaps the wait.
STREAM_FLUSH = 0.02
# A burst ends once netlink has been quiet for BURST_QUIET; until then what
# arrives goes at once (a flush on a busy machine leaves gaps, and the
# records after one would otherwise wait for the flush deadline).
BURST_QUIET = 0.05
# Cache removals a burst left (Correlator.reap) run once netlink has been
# quiet for REAP_QUIET, REAP_CHUNK per pass of the loop: a burst's CPU goes
# to its events first.  Finding netlink empty is not quiet (a flush sharing
# the CPU adds events only while nfflowd sleeps); waiting in select gives
# the CPU back instead.
REAP_CHUNK = 24576
REAP_QUIET = 0.002
# Within a trickle's waits, REAP_PER_SECOND_OF_WAIT removals per second of
# wait (about a quarter of it): only in a stream slower than
# REAP_STREAM_RATE datagrams per second (there a wait is idle time), or once
# half of ctcache.DEAD_MAX are pending (a fast stream that never pauses
# would otherwise pay for them inline).
REAP_PER_SECOND_OF_WAIT = 400_000
REAP_STREAM_RATE = 30_000


class Wait:
    """One pacing wait, until ``end``: the daemon sleeps the time ``next``
    returns, then tells it what the receive queue holds, until it returns 0.
    ``stopped``: the stream stopped (a quiet slice of a fast stream);
    ``seen``: the queue's bytes at the last look after a sleep (0: none);
    ``over``: no more looks (a sleep ``next`` returned may be left)."""

    __slots__ = ("end", "full", "fast", "slice", "seen", "stopped", "_base", "over")

    def __init__(self, end: float, rate: float, full: float = float("inf")):
        self.end = end
        self.full = full                # bytes queued that make the batch
        # a slow stream (or one just begun: its rate is a guess) looks less
        # often, and only for a full batch
        self.fast = rate >= FAST_RATE
        self.slice = WAIT_SLICE if self.fast else WAIT_SLICE_SLOW
        self.seen = 0
        self.stopped = False
        self._base: int | None = -1     # the queue at the last look (-1: none yet)
        self.over = False

    def due(self, now: float) -> bool:
        """Whether any of the wait is left at ``now``."""
        return now < self.end

    def next(self, queued: int | None, now: float) -> float:
        """The queue holds ``queued`` bytes at ``now`` (None: the socket
        cannot tell; the rest of the wait is then slept whole): seconds to
        sleep before the next look, 0.0 when the wait is over."""
        if self.over:
            return 0.0
        left = self.end - now
        if queued is None:
            self.over = True
            return max(0.0, left)
        if self._base != -1:
            self.seen = queued
            if queued == self._base and self.fast:
                self.stopped = self.over = True       # nothing new in a slice
                return 0.0
            if queued >= self.full:
                self.over = True                       # the batch has gathered
                return 0.0
        self._base = queued
        if left <= 0:
            self.over = True
            return 0.0
        return min(left, self.slice)


class Pacer:
    """The receive loop's pacing state, across receive calls (a burst, the
    rate window, the last export) and within one (``begin`` to the last
    ``received``).  Every method takes the time it is told; none reads a
    clock."""

    def __init__(self):
        # a burst is being received (STREAM_BATCH datagrams or more since the
        # last export, or a threshold flush): its tail goes when it pauses
        self.in_burst = False
        # when netlink was last found empty, None after events
        self.quiet_from: float | None = None
        self.last_export = 0.0          # when flows were last exported
        self.since_flush = 0           # datagrams received since any flush
        # what one event datagram takes of the receive buffer, learnt from
        # the waits' looks at the queue
        self.truesize = float(EVENT_TRUESIZE)
        self.burst_rate = 0.0           # the rate of the last round with events
        # datagrams received in the current FAST_WINDOW, and the last one's rate
        self.window_start, self.window_count, self.window_rate = 0.0, 0, 0.0
        # the seconds to wait before the next round of this receive call
        self.wait = 0.0
        self._room = 1.0
        self._prev = self._back = self._last_rate = 0.0
        self._first = True
        self._waited: Wait | None = None

    # -- one receive call -------------------------------------------------------
    def begin(self, now: float, rcvbuf: int) -> None:
        """A receive call starts at ``now`` on a socket of ``rcvbuf`` bytes."""
        # events the buffer holds, a quarter of which a wait may fill
        self._room = max(1, rcvbuf // EVENT_TRUESIZE) / 4
        self._prev = now
        self._back = now + RECEIVE_SPAN
        self._last_rate = 0.0
        self._first = True
        self.wait = 0.0
        self._waited = None

    def spent(self) -> bool:
        """The next wait would pass RECEIVE_SPAN: the loop's turn."""
        return self._prev + self.wait > self._back

    def export_before_wait(self, now: float) -> bool:
        """Pending flows go before the wait: in a burst, or STREAM_FLUSH after
        the last export."""
        return self.in_burst or now - self.last_export >= STREAM_FLUSH

    def reaps_in_wait(self, reap_pending: int) -> int:
        """How many cache removals the coming wait makes (0: none)."""
        if self._last_rate < REAP_STREAM_RATE or reap_pending >= DEAD_MAX // 2:
            return max(256, int(self.wait * REAP_PER_SECOND_OF_WAIT))
        return 0

    def start_wait(self, now: float) -> Wait:
        """The wait before the next round, from ``now``."""
        self._waited = Wait(now + self.wait, self._last_rate, STREAM_BATCH * self.truesize)
        return self._waited

    def overrun(self) -> None:
        """The round failed (ENOBUFS): the next one goes at once."""
        self.wait = 0.0
        self._waited = None

    def received(self, got: int, now: float) -> None:
        """A round drained ``got`` datagrams at ``now``: sets ``wait``."""
        waited, self._waited = self._waited, None
        if waited is not None and 0 < got < RECV_BATCH and waited.seen:
            # what a datagram took of the buffer: the queue at the end of the
            # wait over the datagrams drained (a few more may have come
            # since: an underestimate, so batches err small)
            self.truesize = min(max(waited.seen / got, 256.0), 65536.0)
        self.since_flush += got
        if self.since_flush >= STREAM_BATCH:
            # arriving faster than a trickle: the tail goes when the stream
            # pauses, not at the next flush deadline
            self.in_burst = True
        rate = got / max(now - self._prev, 1e-4)        # datagrams per second
        if self._first:
            self._first = False
            if self.in_burst:
                # a burst resuming after a pause: the first round's own
                # interval is too short to say how fast it comes
                rate = max(rate, self.burst_rate)
        self._window(got, now)
        stopped = waited is not None and waited.stopped
        steady = not self.in_burst and self.window_rate < FAST_RATE
        if 0 < got < STREAM_BATCH and not stopped and (steady or rate >= self._last_rate / 2):
            cap = STREAM_WAIT_STEADY if steady else STREAM_WAIT
            self.wait = min(cap, (STREAM_BATCH - got) / rate, self._room / rate)
        else:
            # a full round, or a fast stream thinning out (the rate fell by
            # half or more, or the wait saw it stop): its tail goes without
            # waiting
            self.wait = 0.0
        self._prev, self._last_rate = now, rate
        if got:
            self.burst_rate = rate

    def _window(self, got: int, now: float) -> None:
        self.window_count += got
        if now - self.window_start >= FAST_WINDOW:
            self.window_rate = self.window_count / (now - self.window_start)
            self.window_start, self.window_count = now, 0
            if self.window_rate < FAST_RATE / 2:
                # a burst slowed down to a steady stream (one that never
                # pauses for BURST_QUIET)
                self.in_burst = False

    # -- events, exports and quiet ---------------------------------------------
    def events(self) -> None:
        """A round brought events: netlink is not quiet."""
        self.quiet_from = None

    def empty(self, now: float) -> None:
        """A round found netlink empty at ``now``."""
        self.quiet_from = now

    def idle(self, now: float) -> None:
        """The loop woke at ``now`` with nothing from netlink."""
        if self.quiet_from is None:
            self.quiet_from = now

    def threshold(self) -> None:
        """FLUSH_THRESHOLD flows pending: a burst."""
        self.in_burst = True

    def flushed(self) -> None:
        """The daemon flushed (whether or not anything was pending)."""
        self.since_flush = 0

    def exported(self, now: float) -> None:
        """Flows went at ``now``."""
        self.last_export = now

    def quiet_for(self, now: float) -> None:
        """After a burst's tail went: the burst ends once netlink has been
        quiet for BURST_QUIET."""
        if now - self.quiet_from >= BURST_QUIET:
            self.in_burst = False

    def reap_due(self, now: float) -> bool:
        """Netlink has been quiet long enough for the cache removals."""
        return now - self.quiet_from >= REAP_QUIET

    def timeout(self, timeout: float, now: float, pending: bool, reap_pending: bool) -> float:
        """The loop's select timeout at ``now``, bounded by a burst (its tail
        goes once netlink is empty, it ends after BURST_QUIET) and by the
        cache removals (due REAP_QUIET after netlink went quiet)."""
        quiet = self.quiet_from if self.quiet_from is not None else now
        if self.in_burst:
            timeout = 0.0 if pending else min(timeout, max(0.0, quiet + BURST_QUIET - now))
        if reap_pending:
            timeout = min(timeout, max(0.0, quiet + REAP_QUIET - now))
        return timeout
