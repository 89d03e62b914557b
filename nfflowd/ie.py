"""The one registry of information elements nfflowd exports (NetFlow v9 and IPFIX).

Strategy: NetFlow v9 field type numbers 1-127 and the IPFIX information element
ids of the IANA registry are the same numbers (RFC 7012 took them over from
RFC 3954), and Cisco's v9 exporters use the IANA ids above 127 too (ASA NSEL:
225-228, 230, 281, 282, 323; 152/153 for absolute times).  So one table serves
both encoders.  Every element of ``ELEMENTS`` is an IANA element (enterprise
number 0); ``BIFLOW_ELEMENTS`` holds what IPFIX biflow export (RFC 5103,
``biflow.py``) adds: biflowDirection (IANA) and the reverse elements.

Each entry is ``name -> IE(id, length, fmt)``: ``length`` is the length we
send (the registry's natural length; no reduced-size encoding) and ``fmt`` the
``struct`` code packing a value of that length, so a template's record layout
is the concatenation of its elements' codes (see ``template.py``).

Checked against the IANA "IP Flow Information Export (IPFIX) Entities"
registry and RFC 7012 / RFC 8158:

  id  name                               type                 length
   1  octetDeltaCount                    unsigned64           8
   2  packetDeltaCount                   unsigned64           8
   4  protocolIdentifier                 unsigned8            1
   7  sourceTransportPort                unsigned16           2
   8  sourceIPv4Address                  ipv4Address          4
  10  ingressInterface                   unsigned32           4   ifindex, 0: unknown
  11  destinationTransportPort           unsigned16           2
  12  destinationIPv4Address             ipv4Address          4
  14  egressInterface                    unsigned32           4
  27  sourceIPv6Address                  ipv6Address          16
  28  destinationIPv6Address             ipv6Address          16
  32  icmpTypeCodeIPv4                   unsigned16           2   type*256+code
                                                                 (v9's ICMP_TYPE: ICMPv6 too)
  58  vlanId                             unsigned16           2   802.1Q VLAN id
  61  flowDirection                      unsigned8            1   0 ingress, 1 egress
 136  flowEndReason                      unsigned8            1
 139  icmpTypeCodeIPv6                   unsigned16           2
 152  flowStartMilliseconds              dateTimeMilliseconds 8   epoch ms
 153  flowEndMilliseconds                dateTimeMilliseconds 8
 225  postNATSourceIPv4Address           ipv4Address          4
 226  postNATDestinationIPv4Address      ipv4Address          4
 227  postNAPTSourceTransportPort        unsigned16           2
 228  postNAPTDestinationTransportPort   unsigned16           2
 230  natEvent                           unsigned8            1   RFC 8158
 234  ingressVRFID                       unsigned32           4   the conntrack zone
 235  egressVRFID                        unsigned32           4
 281  postNATSourceIPv6Address           ipv6Address          16
 282  postNATDestinationIPv6Address      ipv6Address          16
 323  observationTimeMilliseconds        dateTimeMilliseconds 8

Biflow (RFC 5103), IPFIX only (NetFlow v9 has no enterprise elements):

 239  biflowDirection                    unsigned8            1   RFC 5103
      reverse<Name> of a counter or time element above: the same id and
      length with the enterprise bit set and Private Enterprise Number
      29305 ("IPFIX Reverse Information Element", RFC 5103 section 6.1):
   1  reverseOctetDeltaCount  (PEN 29305) unsigned64          8
   2  reversePacketDeltaCount (PEN 29305) unsigned64          8
 152  reverseFlowStartMilliseconds (PEN 29305)                8
 153  reverseFlowEndMilliseconds   (PEN 29305)                8

Options records (``options.py``; ``OPTION_ELEMENTS``, and ingressInterface
above as a scope and as a field), in v9 by the same numbers (RFC 3954's
names in brackets):

  34  samplingInterval       [SAMPLING_INTERVAL] unsigned32   4   deprecated in IPFIX
  35  samplingAlgorithm      [SAMPLING_ALGORITHM] unsigned8   1   1 deterministic; deprecated
  40  exportedOctetTotalCount      [TOTAL_BYTES_EXP] unsigned64 8
  41  exportedMessageTotalCount    [TOTAL_PKTS_EXP]  unsigned64 8
  42  exportedFlowRecordTotalCount [TOTAL_FLOWS_EXP] unsigned64 8
  82  interfaceName          [IF_NAME]         string         16 in v9, variable in IPFIX
  83  interfaceDescription   [IF_DESC]         string         64
 144  exportingProcessId                       unsigned32     4   scope
 149  observationDomainId                      unsigned32     4   scope
 166  notSentFlowTotalCount                    unsigned64     8
 305  samplingPacketInterval                   unsigned32     4
 306  samplingPacketSpace                      unsigned32     4

A string's ``fmt`` is ``"<n>s"`` (NUL-padded by ``struct``); ``options.py``
encodes the variable-length form (RFC 7011 section 7) itself.

Application fields (``L7_ELEMENTS``, keyed by the ``FlowBatch.l7`` field
names; IPFIX only, see ``template.py``): the enterprise elements ipfixprobe
exports them under (its ``ipfix-elements.hpp``), with the names and types of
libfds's ``cesnet.xml`` / ``flowmon.xml`` (ipfixcol2's element files); PEN
8057 is CESNET's, 39499 Flowmon's.  ``length`` 65535: variable length.

  field             PEN    id  name                 type          length
  tls_sni           8057  808  TLSSNI               string        variable
  tls_alpn         39499  337  tlsAlpn              string        variable
  tls_version      39499  333  tlsServerVersion     unsigned16    2
  tls_ja3          39499  357  tlsJa3Fingerprint    octetArray    variable (the 16-byte
                                                                   MD5, as ipfixprobe sends it)
  tls_ja4           8057  809  tlsJa4               string        variable (ipfixprobe's TLS_JA4;
                                                                   not in libfds 2025-01)
  quic_sni          8057  890  quicSNI              string        variable
  quic_user_agent   8057  891  quicUserAgent        string        variable
  quic_version      8057  892  quicVersion          unsigned32    4
  http_method       8057  200  httpMethod           string        variable
  http_host        39499    1  httpHost             string        variable
  http_path        39499    2  httpUrl              string        variable (ipfixprobe's HTTP_URI:
                                                                   the request target)
  http_user_agent  39499   20  httpUserAgent        string        variable
  http_status      39499   12  httpStatusCode       unsigned16    2
  dns_qname         8057    2  DNSName              string        variable
  dns_qtype         8057    3  DNSQType             unsigned16    2
  dns_rcode         8057    1  DNSRCode             unsigned8     1
  dns_answers       8057   14  DNSAnswers           unsigned16    2

NetFlow v9 (RFC 3954) has neither enterprise numbers nor variable-length
fields.  ``V9_L7_ELEMENTS``: the fields that have an IANA element go under
it (the IANA ids above 127 in v9, as for the NAT elements above; tshark
reads them from v9 as from IPFIX), strings of a fixed length, cut at a
character boundary and NUL-padded, as nProbe sends strings in v9; the
others (TLS, QUIC, DNS: no IANA element) are left out of v9, counted.

  field             id  name                 type          length in v9
  http_method      459  httpRequestMethod    string        8
  http_host        460  httpRequestHost      string        64
  http_path        461  httpRequestTarget    string        128
  http_user_agent  468  httpUserAgent        string        128
  http_status      457  httpStatusCode       unsigned16    2
"""

from __future__ import annotations

from typing import NamedTuple


class IE(NamedTuple):
    id: int
    length: int
    fmt: str            # struct code for one value of ``length`` bytes
    enterprise: int = 0


VARLEN = 0xFFFF     # the field length of a variable-length element (RFC 7011 section 7)

ELEMENTS: dict[str, IE] = {
    "octetDeltaCount": IE(1, 8, "Q"),
    "packetDeltaCount": IE(2, 8, "Q"),
    "protocolIdentifier": IE(4, 1, "B"),
    "sourceTransportPort": IE(7, 2, "H"),
    "sourceIPv4Address": IE(8, 4, "4s"),
    "ingressInterface": IE(10, 4, "I"),
    "destinationTransportPort": IE(11, 2, "H"),
    "destinationIPv4Address": IE(12, 4, "4s"),
    "egressInterface": IE(14, 4, "I"),
    "sourceIPv6Address": IE(27, 16, "16s"),
    "destinationIPv6Address": IE(28, 16, "16s"),
    "icmpTypeCodeIPv4": IE(32, 2, "H"),
    "vlanId": IE(58, 2, "H"),
    "flowDirection": IE(61, 1, "B"),
    "flowEndReason": IE(136, 1, "B"),
    "icmpTypeCodeIPv6": IE(139, 2, "H"),
    "flowStartMilliseconds": IE(152, 8, "Q"),
    "flowEndMilliseconds": IE(153, 8, "Q"),
    "postNATSourceIPv4Address": IE(225, 4, "4s"),
    "postNATDestinationIPv4Address": IE(226, 4, "4s"),
    "postNAPTSourceTransportPort": IE(227, 2, "H"),
    "postNAPTDestinationTransportPort": IE(228, 2, "H"),
    "natEvent": IE(230, 1, "B"),
    "ingressVRFID": IE(234, 4, "I"),
    "egressVRFID": IE(235, 4, "I"),
    "postNATSourceIPv6Address": IE(281, 16, "16s"),
    "postNATDestinationIPv6Address": IE(282, 16, "16s"),
    "observationTimeMilliseconds": IE(323, 8, "Q"),
}

BY_ID: dict[int, str] = {ie.id: name for name, ie in ELEMENTS.items()}

# RFC 5103 section 6.1: "IPFIX Reverse Information Element" Private Enterprise Number
REVERSE_PEN = 29305


def _reverse(name: str) -> tuple[str, IE]:
    fwd = ELEMENTS[name]
    return "reverse" + name[0].upper() + name[1:], fwd._replace(enterprise=REVERSE_PEN)


BIFLOW_ELEMENTS: dict[str, IE] = {
    "biflowDirection": IE(239, 1, "B"),
    **dict(_reverse(n) for n in ("octetDeltaCount", "packetDeltaCount",
                                 "flowStartMilliseconds", "flowEndMilliseconds")),
}


OPTION_ELEMENTS: dict[str, IE] = {
    "samplingInterval": IE(34, 4, "I"),
    "samplingAlgorithm": IE(35, 1, "B"),
    "exportedOctetTotalCount": IE(40, 8, "Q"),
    "exportedMessageTotalCount": IE(41, 8, "Q"),
    "exportedFlowRecordTotalCount": IE(42, 8, "Q"),
    "interfaceName": IE(82, 16, "16s"),
    "interfaceDescription": IE(83, 64, "64s"),
    "exportingProcessId": IE(144, 4, "I"),
    "observationDomainId": IE(149, 4, "I"),
    "notSentFlowTotalCount": IE(166, 8, "Q"),
    "samplingPacketInterval": IE(305, 4, "I"),
    "samplingPacketSpace": IE(306, 4, "I"),
}


CESNET_PEN, FLOWMON_PEN = 8057, 39499


class L7Element(NamedTuple):
    """An application field's element: ``ie`` as the registry's entries,
    its IPFIX name and data type (for element files such as ipfixDump's)."""
    ie: IE
    name: str
    type: str


def _l7(pen: int, eid: int, name: str, type_: str) -> L7Element:
    fixed = {"unsigned8": (1, "B"), "unsigned16": (2, "H"), "unsigned32": (4, "I")}
    length, fmt = fixed.get(type_, (VARLEN, ""))
    return L7Element(IE(eid, length, fmt, pen), name, type_)


# in the order their fields go in a template
L7_ELEMENTS: dict[str, L7Element] = {
    "tls_sni": _l7(CESNET_PEN, 808, "TLSSNI", "string"),
    "tls_alpn": _l7(FLOWMON_PEN, 337, "tlsAlpn", "string"),
    "tls_version": _l7(FLOWMON_PEN, 333, "tlsServerVersion", "unsigned16"),
    "tls_ja3": _l7(FLOWMON_PEN, 357, "tlsJa3Fingerprint", "octetArray"),
    "tls_ja4": _l7(CESNET_PEN, 809, "tlsJa4", "string"),
    "quic_sni": _l7(CESNET_PEN, 890, "quicSNI", "string"),
    "quic_user_agent": _l7(CESNET_PEN, 891, "quicUserAgent", "string"),
    "quic_version": _l7(CESNET_PEN, 892, "quicVersion", "unsigned32"),
    "http_method": _l7(CESNET_PEN, 200, "httpMethod", "string"),
    "http_host": _l7(FLOWMON_PEN, 1, "httpHost", "string"),
    "http_path": _l7(FLOWMON_PEN, 2, "httpUrl", "string"),
    "http_user_agent": _l7(FLOWMON_PEN, 20, "httpUserAgent", "string"),
    "http_status": _l7(FLOWMON_PEN, 12, "httpStatusCode", "unsigned16"),
    "dns_qname": _l7(CESNET_PEN, 2, "DNSName", "string"),
    "dns_qtype": _l7(CESNET_PEN, 3, "DNSQType", "unsigned16"),
    "dns_rcode": _l7(CESNET_PEN, 1, "DNSRCode", "unsigned8"),
    "dns_answers": _l7(CESNET_PEN, 14, "DNSAnswers", "unsigned16"),
}


V9_L7_ELEMENTS: dict[str, L7Element] = {
    "http_method": L7Element(IE(459, 8, "8s"), "httpRequestMethod", "string"),
    "http_host": L7Element(IE(460, 64, "64s"), "httpRequestHost", "string"),
    "http_path": L7Element(IE(461, 128, "128s"), "httpRequestTarget", "string"),
    "http_user_agent": L7Element(IE(468, 128, "128s"), "httpUserAgent", "string"),
    "http_status": L7Element(IE(457, 2, "H"), "httpStatusCode", "unsigned16"),
}


def element(name: str) -> IE:
    """The registry entry of ``name``; KeyError names the unknown element."""
    try:
        return ELEMENTS[name]
    except KeyError:
        pass
    try:
        return BIFLOW_ELEMENTS[name]
    except KeyError:
        pass
    try:
        return OPTION_ELEMENTS[name]
    except KeyError:
        pass
    try:
        return L7_ELEMENTS[name].ie
    except KeyError:
        raise KeyError(f"unknown information element {name!r}") from None
