"""Connections into flow records.

Strategy: conntrack keeps one entry per connection with two tuples, the
original direction as the initiator sent it and the reply direction as the
answer arrives (before the kernel undoes the translation).  Comparing the two
tells what NAT did, whatever kind of NAT it was:

- original flow: the original tuple, and as its post-NAT side the reply tuple
  inverted (reply dst -> src);
- reply flow: the reply tuple, and as its post-NAT side the original tuple
  inverted.

That holds for source NAT, destination NAT (port forwards), both at once, and
no NAT (then pre and post are equal and ``Flow.translated`` is False).

Times: with ``nf_conntrack_timestamp=1`` the DESTROY event carries start and
stop, and nothing is kept per connection.  Without it, the time of the NEW event
is remembered by conntrack id; entries older than ``ttl`` are purged (the
connection's DESTROY was lost, or it really lives that long) and counted.

Connections that already existed when nfflowd started are learnt from a table
dump (``add_dumped``).  With the kernel default ``nf_conntrack_events=2`` they
never send DESTROY, so the daemon dumps the table every poll interval and
``reconcile`` exports the ones that have gone, with the last counters seen and
their last-seen time as end.  If they do send DESTROY (``nf_conntrack_events=1``)
the event wins and the later poll does not export them again.

The class is sans-IO: every method takes ``now_ns`` (wall clock, ns) and returns
records; it never reads a clock or touches a socket.
"""

from __future__ import annotations

from .conntrack import EV_DESTROY, EV_NEW, CtEvent
from .record import END_OF_FLOW, ORIGINAL, REPLY, Flow, NatEvent

_ICMP_PROTOS = (1, 58)
_NS_PER_MS = 1_000_000
# Flow(...) goes through NamedTuple.__new__ (keyword handling, defaults);
# tuple.__new__ with every field given is ~2.5x faster on this hot path.
# Every call below passes all 19 fields in Flow's order.
_new = tuple.__new__
# A connection exported by the poller is remembered this long so that a late
# DESTROY event for it is recognised as a duplicate instead of exported twice.
_POLL_EXPORT_MEMORY_NS = 600 * 1_000_000_000


def flows_of(ev: CtEvent, start_ns: int, end_ns: int,
             end_reason: int = END_OF_FLOW) -> tuple[Flow, Flow]:
    """The two directional flows of one connection (original, reply)."""
    # Unpacking is much cheaper than NamedTuple attribute access on this path.
    _kind, fam, ct_id, _status, o, r, opk, oby, rpk, rby = ev[:10]
    osrc, odst, proto, osport, odport = o
    rsrc, rdst, _proto, rsport, rdport = r
    start_ms = start_ns // _NS_PER_MS
    end_ms = end_ns // _NS_PER_MS
    if proto in _ICMP_PROTOS:
        # NetFlow convention: sport 0, dport type*256+code.  The ICMP id (which
        # NAT may rewrite) is not a port and is not exported.
        return (
            _new(Flow, (fam, proto, osrc, odst, 0, odport, rdst, rsrc, 0, odport,
                        opk, oby, start_ms, end_ms, ORIGINAL, end_reason, 0, 0, ct_id)),
            _new(Flow, (fam, proto, rsrc, rdst, 0, rdport, odst, osrc, 0, rdport,
                        rpk, rby, start_ms, end_ms, REPLY, end_reason, 0, 0, ct_id)),
        )
    return (
        _new(Flow, (fam, proto, osrc, odst, osport, odport, rdst, rsrc, rdport, rsport,
                    opk, oby, start_ms, end_ms, ORIGINAL, end_reason, 0, 0, ct_id)),
        _new(Flow, (fam, proto, rsrc, rdst, rsport, rdport, odst, osrc, odport, osport,
                    rpk, rby, start_ms, end_ms, REPLY, end_reason, 0, 0, ct_id)),
    )


def nat_event_of(ev: CtEvent, now_ns: int, created: bool) -> NatEvent | None:
    """The RFC 8158 session event of a translated connection, else None."""
    o = ev.orig
    r = ev.reply
    if o.proto in _ICMP_PROTOS:
        # A NAT log must tie a ping to its translated ICMP query id, so here
        # (unlike in flow records) the id goes where the source port would:
        # the original id, and the reply tuple's id as the translated one.
        pre = (o.src, o.dst, o.sport, o.dport)
        post = (r.dst, r.src, r.sport, o.dport)
    else:
        pre = (o.src, o.dst, o.sport, o.dport)
        post = (r.dst, r.src, r.dport, r.sport)
    if pre == post:
        return None
    return NatEvent(ev.family, o.proto, *pre, *post, now_ns // _NS_PER_MS, created, ev.ct_id)


def _key(ev: CtEvent):
    return (ev.ct_id, ev.orig)


class Correlator:
    """Turns ctnetlink events into ``Flow`` records (and NAT session events)."""

    def __init__(self, ttl: float = 604800, kernel_timestamps: bool = True,
                 nat_events: bool = False):
        self.ttl_ns = int(ttl * 1_000_000_000)
        # When the kernel stamps connections, NEW times need not be kept.
        self.kernel_timestamps = kernel_timestamps
        self.want_nat_events = nat_events
        self._new_ns: dict[int, int] = {}       # ct_id -> NEW event time
        self._dumped: dict = {}                 # key -> [event, first_seen_ns, last_seen_ns]
        self._poll_exported: dict = {}          # key -> time exported by the poller
        self.nat_events: list[NatEvent] = []    # pending, taken by the caller
        self.counters = {
            "events_new": 0,
            "events_destroy": 0,
            "events_other": 0,         # updates, dump entries
            "connections_exported": 0,
            "exported_by_poll": 0,
            "purged_ttl": 0,
            "duplicate_destroy": 0,
        }

    # -- hot path -----------------------------------------------------------
    def handle_batch(self, events, now_ns: int, out: list) -> None:
        """Every event of a batch, in order; the flows that the DESTROY events
        end are appended to ``out`` (original, then reply, per connection)."""
        new_ns = self._new_ns
        dumped = self._dumped
        poll_exported = self._poll_exported
        keep_new_times = not self.kernel_timestamps
        want_nat = self.want_nat_events
        extend = out.extend
        exported = duplicates = new = other = 0
        for ev in events:
            kind = ev[0]
            if kind == EV_DESTROY:
                ct_id = ev[2]
                start = ev[10]                      # start_ns
                if new_ns:
                    remembered = new_ns.pop(ct_id, 0)
                    if not start:
                        start = remembered
                if dumped or poll_exported:
                    key = (ct_id, ev[4])            # (ct_id, orig): see _key
                    if poll_exported.pop(key, None) is not None:
                        duplicates += 1
                        continue
                    entry = dumped.pop(key, None)
                    if entry is not None and not start:
                        start = entry[0].start_ns or entry[1]
                end = ev[11] or now_ns              # stop_ns
                if not start:
                    start = end
                exported += 1
                if want_nat:
                    nat = nat_event_of(ev, end, False)
                    if nat is not None:
                        self.nat_events.append(nat)
                extend(flows_of(ev, start, end))
            elif kind == EV_NEW:
                new += 1
                if keep_new_times:
                    new_ns[ev[2]] = now_ns
                if want_nat:
                    nat = nat_event_of(ev, now_ns, True)
                    if nat is not None:
                        self.nat_events.append(nat)
            else:
                other += 1
        c = self.counters
        c["events_new"] += new
        c["events_destroy"] += exported + duplicates
        c["events_other"] += other
        if exported:
            self.counters["connections_exported"] += exported
        if duplicates:
            self.counters["duplicate_destroy"] += duplicates

    def handle(self, ev: CtEvent, now_ns: int) -> list[Flow]:
        """One event in; the flows it ends (none for NEW/UPDATE) out."""
        out: list[Flow] = []
        self.handle_batch((ev,), now_ns, out)
        return out

    def take_nat_events(self) -> list[NatEvent]:
        events, self.nat_events = self.nat_events, []
        return events

    # -- connections older than the daemon -------------------------------------
    def add_dumped(self, events, now_ns: int) -> int:
        """Learn the table as it was at start.  Returns how many were added."""
        added = 0
        for ev in events:
            key = _key(ev)
            if key not in self._dumped:
                self._dumped[key] = [ev, now_ns, now_ns]
                added += 1
        return added

    @property
    def dumped_pending(self) -> int:
        """Connections known only from the start-up dump that have not ended."""
        return len(self._dumped)

    def reconcile(self, table, now_ns: int) -> list[Flow]:
        """Compare a fresh table dump with the connections known from the
        start-up dump: refresh those still there, export those gone."""
        present = {}
        for ev in table:
            present[_key(ev)] = ev
        out: list[Flow] = []
        for key in list(self._dumped):
            entry = self._dumped[key]
            ev = present.get(key)
            if ev is not None:
                entry[0] = ev
                entry[2] = now_ns
                continue
            del self._dumped[key]
            last, first_seen, last_seen = entry
            start = last.start_ns or first_seen
            out.extend(flows_of(last, start, max(last_seen, start)))
            self._poll_exported[key] = now_ns
            self.counters["connections_exported"] += 1
            self.counters["exported_by_poll"] += 1
            if self.want_nat_events:
                nat = nat_event_of(last, last_seen, False)
                if nat is not None:
                    self.nat_events.append(nat)
        return out

    # -- housekeeping -----------------------------------------------------------
    def purge(self, now_ns: int) -> int:
        """Forget NEW times older than the TTL; returns how many."""
        limit = now_ns - self.ttl_ns
        stale = [cid for cid, t in self._new_ns.items() if t < limit]
        for cid in stale:
            del self._new_ns[cid]
        old = now_ns - _POLL_EXPORT_MEMORY_NS
        for key in [k for k, t in self._poll_exported.items() if t < old]:
            del self._poll_exported[key]
        self.counters["purged_ttl"] += len(stale)
        return len(stale)

    @property
    def tracked(self) -> int:
        """Connections for which state is held (NEW times kept)."""
        return len(self._new_ns)
