"""Ingress and egress interface of a connection, worked out in user space.

Conntrack does not say which interfaces a connection crossed.  Three ways to
find out (``Interfaces(method=...)``):

- ``route``: an in-process copy of the namespace's routes, kept current from
  rtnetlink messages (``io/rtnl`` parses them into the plain ``Link``,
  ``Address`` and ``Route`` tuples below).  Ingress of the original direction
  is the interface of the route back to its source, egress the interface of
  the route to the reply's source (the destination after DNAT).  Local
  addresses (the local table's local and broadcast routes, and the
  addresses) come first, as the kernel's local rule does, and give 0: a
  connection the host opens has no ingress, one it accepts no egress.  Then
  a longest-prefix match in the main table; a multipath route counts as its
  first nexthop.  Other tables (policy routing, VRFs) are not consulted.
- ``mark`` / ``zone``: nft rules set a ct mark (or put connections in a
  conntrack zone) per interface; a configured map turns the value into the
  original direction's (ingress, egress), given as interface names (resolved
  through the links table) or indexes.
- no ``Interfaces`` at all (``none``): zeros, as before.

The reply record's pair is the original's swapped (``pair``).  Lookups are
answered from a dict address -> ifindex cleared whenever a route or address
changes; ``pair_block`` is the same over a ``ctblocks.DestroyBlock``'s
columns: the tables flattened into disjoint address ranges with one answer
each (made at the first block after a change), one ``np.searchsorted`` per
family.  A change rebuilds the tables at the next lookup: cheap for a
firewall's few hundred routes, seconds for a full Internet table.
Sans-IO: no sockets, no clock.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

METHODS = ("route", "mark", "zone", "none")

# rtnetlink numbers (linux/rtnetlink.h)
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
RTN_UNICAST = 1
RTN_LOCAL = 2
RTN_BROADCAST = 3

# the address -> ifindex cache is dropped whole beyond this many entries
CACHE_MAX = 1 << 20


class Link(NamedTuple):
    """An interface appeared or changed (``add``), or went.  ``up``: its
    administrative state (IFF_UP)."""
    add: bool
    index: int
    name: str
    description: str = ""       # IFLA_IFALIAS
    up: bool = True


class Address(NamedTuple):
    """An address of this host (``address``: packed, 4 or 16 bytes)."""
    add: bool
    family: int                 # 4 or 6
    index: int
    address: bytes


class Route(NamedTuple):
    """A route of any table.  ``dst``: the packed prefix (4 or 16 bytes);
    ``oif``: the output interface, the first nexthop's for a multipath
    route, 0 for none; ``replace``: it replaces the route with the same
    destination, length, tos and priority (NLM_F_REPLACE)."""
    add: bool
    family: int
    table: int
    kind: int                   # RTN_*
    dst: bytes
    dst_len: int
    oif: int
    priority: int = 0
    tos: int = 0
    replace: bool = False


class Reset(NamedTuple):
    """Forget every link, address and route (a fresh dump follows)."""


_BITS = {4: 32, 6: 128}


def _mask(family: int, plen: int) -> int:
    bits = _BITS[family]
    return ((1 << plen) - 1) << (bits - plen) if plen else 0


class _Table:
    """Prefixes of one family -> value; longest prefix wins."""

    def __init__(self, family: int, entries: dict):
        # entries: (prefix int, plen) -> value
        self.family = family
        by_len: dict[int, dict[int, int]] = {}
        for (net, plen), value in entries.items():
            by_len.setdefault(plen, {})[net & _mask(family, plen)] = value
        self.lengths = sorted(by_len, reverse=True)
        self.scalar = [(_mask(family, p), by_len[p]) for p in self.lengths]

    def bounds(self) -> set:
        """The first address of each prefix and the one after its last."""
        top = 1 << _BITS[self.family]
        out = set()
        for mask, nets in self.scalar:
            size = (top - 1 - mask) + 1
            for net in nets:
                out.add(net)
                if net + size < top:
                    out.add(net + size)
        return out

    def get(self, a: int):
        """The value of the longest prefix holding ``a``, or None."""
        for mask, nets in self.scalar:
            v = nets.get(a & mask)
            if v is not None:
                return v
        return None



class _Ranges:
    """The answers of one family as disjoint address ranges, for the block
    form: the prefixes' ends cut the address space into ranges within which
    every address has the same answer (the lookup of the range's first
    address), so a lookup is one ``np.searchsorted``."""

    def __init__(self, family: int, answer, bounds: set):
        starts = sorted(bounds | {0})
        self.family = family
        self.values = np.array([answer(b) for b in starts], dtype=np.uint64)
        if family == 4:
            self.starts = np.array(starts, dtype=np.uint32)
        else:
            self.starts = np.array([b.to_bytes(16, "big") for b in starts], dtype="S16")

    def get_many(self, keys) -> np.ndarray:
        """Answers of addresses as keys: IPv4 uint32 (native order), IPv6
        S16 (big-endian bytes, which order as the numbers do)."""
        return self.values[np.searchsorted(self.starts, keys, side="right") - 1]


class Interfaces:
    """The interface pair of a connection (see the module's docstring).

    ``update(messages)`` applies ``Link``/``Address``/``Route``/``Reset``
    messages and returns whether the links changed; ``pair(ev)`` is the
    original direction's (in_if, out_if) of a ``CtEvent``; ``pair_block``
    the same as two uint64 arrays; ``links`` the interfaces as
    ``{ifindex: (name, description)}``; ``sizes()`` what is held."""

    def __init__(self, method: str = "route", mapping=None):
        self.links: dict[int, tuple[str, str]] = {}
        self._addrs: dict = {}          # (family, index, address) -> True
        # (family, table, dst int, plen, tos, priority) -> {oif: kind}
        self._routes: dict = {}
        self._cache: dict[bytes, int] = {}
        self._dirty = True
        self._tables: dict = {}         # family -> (local _Table, main _Table)
        self._ranges: dict = {}         # family -> _Ranges (the block form)
        self._resolved: dict | None = None
        self.configure(method, mapping)

    # -- configuration ---------------------------------------------------------
    def configure(self, method: str, mapping=None) -> None:
        """The method, and for ``mark``/``zone`` the map: value ->
        (ingress, egress), each an interface name or index."""
        if method not in METHODS:
            raise ValueError(f"unknown interfaces method {method!r} (expected one of: "
                             f"{', '.join(METHODS)})")
        self.method = method
        self.mapping = dict(mapping or {})
        self._resolved = None
        self.pair = {"route": self._pair_route, "mark": self._pair_mark,
                     "zone": self._pair_zone, "none": self._pair_none}[method]

    # -- messages ----------------------------------------------------------------
    def update(self, messages) -> bool:
        """Apply rtnetlink messages, in order; True if the links changed."""
        links_changed = False
        for m in messages:
            if isinstance(m, Route):
                self._route(m)
            elif isinstance(m, Link):
                if not m.add or not m.up:
                    self._link_gone(m.index, m.add)
                if m.add:
                    new = (m.name, m.description)
                    if self.links.get(m.index) != new:
                        self.links[m.index] = new
                        links_changed = True
                elif self.links.pop(m.index, None) is not None:
                    links_changed = True
            elif isinstance(m, Address):
                key = (m.family, m.index, m.address)
                if m.add:
                    self._addrs[key] = True
                else:
                    self._addrs.pop(key, None)
                self._dirty = True
            elif isinstance(m, Reset):
                if self.links:
                    links_changed = True
                self.links.clear()
                self._addrs.clear()
                self._routes.clear()
                self._dirty = True
            else:
                raise TypeError(f"not an rtnetlink message: {m!r}")
        if self._dirty:
            self._cache.clear()         # (tables rebuilt at the next miss)
        if links_changed:
            self._resolved = None
        return links_changed

    def _link_gone(self, index: int, down_only: bool) -> None:
        """The kernel drops a link's IPv4 routes without a message when the
        link goes down or away; every route and address of a link that
        went."""
        routes = self._routes
        for head in [h for h, hops in routes.items()
                     if index in hops and (h[0] == 4 or not down_only)]:
            del routes[head][index]
            if not routes[head]:
                del routes[head]
        if not down_only:
            for k in [k for k in self._addrs if k[1] == index]:
                del self._addrs[k]
        self._dirty = True

    def _route(self, m: Route) -> None:
        if m.table not in (RT_TABLE_MAIN, RT_TABLE_LOCAL) or m.tos:
            return      # other tables: policy routing, not ours; tos routes match by TOS
        net = int.from_bytes(m.dst, "big") if m.dst else 0
        head = (m.family, m.table, net, m.dst_len, m.tos, m.priority)
        routes = self._routes
        if m.add:
            if m.replace or head not in routes:
                routes[head] = {m.oif: m.kind}
            else:
                hops = routes[head]
                hops.pop(m.oif, None)       # (re-added: now the latest)
                hops[m.oif] = m.kind
        elif head in routes:
            hops = routes[head]
            if hops.pop(m.oif, None) is None:
                hops.clear()                # (the kernel's key has no interface)
            if not hops:
                del routes[head]
        self._dirty = True

    def _rebuild(self) -> None:
        local = {4: {}, 6: {}}
        main = {4: {}, 6: {}}
        for (family, _idx, address) in self._addrs:
            local[family][(int.from_bytes(address, "big"), _BITS[family])] = 0
        # (sorted: of two routes to one prefix the lower priority wins)
        for (family, table, net, plen, _tos, _prio), hops in sorted(
                self._routes.items(), key=lambda kv: -kv[0][5]):
            for oif, kind in hops.items():
                self._place(local, main, family, table, net, plen, oif, kind)
        self._tables = {f: (_Table(f, local[f]), _Table(f, main[f])) for f in (4, 6)}
        self._ranges = {}               # family -> _Ranges, made at the first block
        self._cache.clear()
        self._dirty = False

    @staticmethod
    def _place(local, main, family, table, net, plen, oif, kind) -> None:
        if table == RT_TABLE_LOCAL or kind == RTN_LOCAL:
            if kind in (RTN_LOCAL, RTN_BROADCAST):
                local[family][(net, plen)] = 0
        elif table == RT_TABLE_MAIN:
            # unicast: its interface; blackhole, unreachable, ...: none
            main[family][(net, plen)] = oif if kind == RTN_UNICAST else 0

    def _answer(self, family: int, a: int) -> int:
        local, main = self._tables[family]
        if local.get(a) is not None:
            return 0
        return main.get(a) or 0

    def _ranges_of(self, family: int) -> "_Ranges":
        r = self._ranges.get(family)
        if r is None:
            local, main = self._tables[family]
            r = self._ranges[family] = _Ranges(family, lambda a: self._answer(family, a),
                                               local.bounds() | main.bounds())
        return r

    # -- lookups -----------------------------------------------------------------
    def lookup(self, address: bytes) -> int:
        """The interface of the route to ``address`` (packed, 4 or 16
        bytes); 0 for a local address or none."""
        i = self._cache.get(address)
        if i is None:
            i = self._miss(address)
        return i

    def _miss(self, address: bytes) -> int:
        if self._dirty:
            self._rebuild()
        i = self._answer(4 if len(address) == 4 else 6, int.from_bytes(address, "big"))
        cache = self._cache
        if len(cache) >= CACHE_MAX:
            cache.clear()
        cache[address] = i
        return i

    def _pair_route(self, ev) -> tuple[int, int]:
        cache = self._cache
        a = ev[4][0]                      # orig.src
        i = cache.get(a)
        if i is None:
            i = self._miss(a)
        b = ev[5][0]                      # reply.src: the destination after DNAT
        o = cache.get(b)
        if o is None:
            o = self._miss(b)
        return i, o

    def _pair_none(self, ev) -> tuple[int, int]:
        return 0, 0

    def _map(self) -> dict:
        if self._resolved is None:
            by_name = {name: idx for idx, (name, _d) in self.links.items()}
            self._resolved = {v: (self._index(a, by_name), self._index(b, by_name))
                              for v, (a, b) in self.mapping.items()}
        return self._resolved

    @staticmethod
    def _index(x, by_name) -> int:
        return x if isinstance(x, int) else by_name.get(x, 0)

    def _pair_mark(self, ev) -> tuple[int, int]:
        return self._map().get(ev[12], (0, 0))

    def _pair_zone(self, ev) -> tuple[int, int]:
        return self._map().get(ev[13], (0, 0))

    def pair_block(self, b) -> tuple[np.ndarray, np.ndarray]:
        """``pair`` over a ``DestroyBlock``: (in_if, out_if), uint64 arrays of
        its original directions."""
        n = b.n
        if self.method == "route":
            both = self.lookup_many(np.concatenate((b.family, b.family)),
                                    np.concatenate((b.o_src, b.r_src)))
            return both[:n], both[n:]
        if self.method == "none":
            z = np.zeros(n, dtype=np.uint64)
            return z, z.copy()
        values = b.mark if self.method == "mark" else b.zone
        uniq, inv = np.unique(values, return_inverse=True)
        m = self._map()
        pairs = np.array([m.get(v, (0, 0)) for v in uniq.tolist()],
                         dtype=np.uint64).reshape(len(uniq), 2)
        return pairs[inv.ravel(), 0], pairs[inv.ravel(), 1]

    def lookup_many(self, family, addrs) -> np.ndarray:
        """``lookup`` over columns: ``family`` (4 or 6 per row) and
        ``addrs`` ((n, 16) uint8, IPv4 in the first 4 bytes)."""
        if self._dirty:
            self._rebuild()
        addrs = np.ascontiguousarray(addrs)
        v6 = family == 6
        n6 = np.count_nonzero(v6)
        if n6 < len(family):
            k4 = addrs.view(">u4")[:, 0].astype(np.uint32)
            if not n6:
                return self._ranges_of(4).get_many(k4)
        k6 = addrs.view("S16").ravel()
        if n6 == len(family):
            return self._ranges_of(6).get_many(k6)
        out = self._ranges_of(4).get_many(k4)
        out[v6] = self._ranges_of(6).get_many(k6[v6])
        return out

    def sizes(self) -> dict:
        """What is held, for ``check`` and the logs."""
        routes = {4: 0, 6: 0}
        local = 0
        for head, hops in self._routes.items():
            for kind in hops.values():
                if head[1] == RT_TABLE_MAIN and kind != RTN_LOCAL:
                    routes[head[0]] += 1
                else:
                    local += 1
        return {"links": len(self.links), "routes4": routes[4], "routes6": routes[6],
                "local": local + len(self._addrs), "cached": len(self._cache)}
