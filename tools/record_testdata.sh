#!/usr/bin/env bash
# Record real ctnetlink messages into tests/data/ (see tests/data/README.md).
# Needs root.  Builds lan -- fw -- wan in three network namespaces (documentation
# addresses only), NATs on fw (masquerade + a DNAT port forward, IPv4 and IPv6),
# runs bounded traffic and captures on fw.  Namespaces are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-tests/data}
PY=${PYTHON:-python3}
CAP="$PY tools/capture_ctnetlink.py"
TRAF="$PY tools/ct_traffic.py"
P=ctrec$$
LAN=$P-lan FW=$P-fw WAN=$P-wan
TMP=$(mktemp -d)
CAPPID=""
SRVPIDS=""

cleanup() {
    for p in $CAPPID $SRVPIDS; do kill "$p" 2>/dev/null || true; done
    for ns in $LAN $FW $WAN; do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

inl() { ip netns exec "$LAN" "$@"; }
infw() { ip netns exec "$FW" "$@"; }
inw() { ip netns exec "$WAN" "$@"; }

for ns in $LAN $FW $WAN; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$LAN" link add eth0 type veth peer name lan0 netns "$FW"
ip -n "$WAN" link add eth0 type veth peer name wan0 netns "$FW"
ip -n "$LAN" addr add 198.51.100.2/24 dev eth0
ip -n "$LAN" addr add 2001:db8:1::2/64 dev eth0 nodad
ip -n "$FW" addr add 198.51.100.1/24 dev lan0
ip -n "$FW" addr add 2001:db8:1::1/64 dev lan0 nodad
ip -n "$FW" addr add 203.0.113.1/24 dev wan0
ip -n "$FW" addr add 2001:db8:2::1/64 dev wan0 nodad
ip -n "$WAN" addr add 203.0.113.2/24 dev eth0
ip -n "$WAN" addr add 2001:db8:2::2/64 dev eth0 nodad
for ns in $LAN $FW $WAN; do ip -n "$ns" link set eth0 up 2>/dev/null || true; done
ip -n "$FW" link set lan0 up; ip -n "$FW" link set wan0 up
ip -n "$LAN" route add default via 198.51.100.1
ip -n "$LAN" -6 route add default via 2001:db8:1::1
ip -n "$WAN" route add default via 203.0.113.1   # for the DNAT replies
ip -n "$WAN" -6 route add default via 2001:db8:2::1
infw sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
infw sysctl -qw net.netfilter.nf_conntrack_acct=1 net.netfilter.nf_conntrack_timestamp=1
infw nft -f - <<'NFT'
table inet ctrec_nat {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "wan0" meta nfproto ipv4 tcp dport 8080 dnat ip to 198.51.100.2:80
        iifname "wan0" meta nfproto ipv6 tcp dport 8080 dnat ip6 to [2001:db8:1::2]:80
        iifname "wan0" meta nfproto ipv4 udp dport 5353 dnat ip to 198.51.100.2:53
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" masquerade
    }
}
NFT

# servers (bounded)
ip netns exec "$WAN" $TRAF serve 40 203.0.113.2 2001:db8:2::2 &
SRVPIDS="$SRVPIDS $!"
ip netns exec "$LAN" $TRAF serve 40 198.51.100.2 2001:db8:1::2 &
SRVPIDS="$SRVPIDS $!"
sleep 1

# event capture on fw: NEW, UPDATE and DESTROY
ip netns exec "$FW" $CAP events -o "$OUT/ct_events.bin" -t 40 -c 5000 --ready-file "$TMP/ready" &
CAPPID=$!
for _ in $(seq 50); do [ -s "$TMP/ready" ] && break; sleep 0.1; done

# phase A: counters and timestamps on
inl $TRAF tcp 203.0.113.2 80                 # IPv4 TCP, SNAT
inl $TRAF udp 203.0.113.2 53                 # IPv4 UDP, SNAT
inl ping -c 2 -W 2 -i 0.2 203.0.113.2 >/dev/null   # ICMP, SNAT
inl $TRAF tcp 2001:db8:2::2 80               # IPv6 TCP, SNAT (NAT66)
inl $TRAF udp 2001:db8:2::2 53               # IPv6 UDP
inl ping -6 -c 2 -W 2 -i 0.2 2001:db8:2::2 >/dev/null  # ICMPv6
inw $TRAF tcp 203.0.113.1 8080               # IPv4 DNAT port forward
inw $TRAF tcp 2001:db8:2::1 8080             # IPv6 DNAT port forward
inw $TRAF udp 203.0.113.1 5353               # IPv4 UDP DNAT
inl $TRAF raw 203.0.113.2 253                # generic protocol (253, experimental)
inl $TRAF udp 198.51.100.1 9                 # to fw itself, no NAT (no listener)
# phase B: counters and timestamps off for new connections
infw sysctl -qw net.netfilter.nf_conntrack_acct=0 net.netfilter.nf_conntrack_timestamp=0
inl $TRAF tcp 203.0.113.2 80
inl $TRAF udp 203.0.113.2 53
inl ping -c 1 -W 2 203.0.113.2 >/dev/null
inl $TRAF udp 2001:db8:2::2 53
sleep 0.5
# the table as a dump, then end everything: DESTROY events
infw $CAP dump -o "$OUT/ct_dump.bin" -t 5
infw conntrack -F 2>/dev/null
sleep 1
kill -TERM "$CAPPID"; wait "$CAPPID" || true
CAPPID=""
for p in $SRVPIDS; do kill "$p" 2>/dev/null || true; done
SRVPIDS=""
ls -l "$OUT"/ct_events.bin "$OUT"/ct_dump.bin
