"""DNS over UDP and TCP: the first question's name and type, the response
code and the answer count.

``inspect(payload, tcp=False)`` takes one DNS message (over TCP: after its
2-byte length prefix) and returns ``(fields, reason)``: ``dns_qname`` (no
trailing dot, as tshark's ``dns.qry.name``; the root is ``<Root>``),
``dns_qtype``, ``dns_answers`` (the header's count) and, in a response,
``dns_rcode``; ``(None, None)`` for a payload too short for a header; a
reason (``REASONS``) for a malformed message.  ``read_name`` decodes a name
with compression (RFC 1035 section 4.1.4) under rules that bound the work:
a pointer must point before the start of the labels it follows (so no
loop), at most ``MAX_POINTERS`` pointers, at most ``MAX_NAME`` bytes of name
(length octets included, as on the wire) and so at most 127 labels.  Sans-IO, never raises.
"""

from __future__ import annotations

__all__ = ["inspect", "read_name", "MAX_NAME", "MAX_POINTERS", "REASONS"]

MAX_NAME = 255
# compression pointers followed in one name (a real name needs one or two)
MAX_POINTERS = 32
REASONS = ("dns_truncated", "dns_compression_loop", "dns_bad_pointer", "dns_name_too_long",
           "dns_bad_label", "dns_too_many_pointers", "dns_parser_error")

# labels shown as tshark shows them (its format_text): UTF-8 (bad bytes as
# U+FFFD), C escapes for the usual controls, octal for other C0 controls and
# DEL, \uXXXX for C1 controls
_ESCAPES = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}


def _char(ch: str) -> str:
    c = ord(ch)
    if c < 0x20 or c == 0x7F:
        return _ESCAPES.get(c) or f"\\{c:03o}"
    if 0x80 <= c <= 0x9F:
        return f"\\u{c:04x}"
    return ch


def _label(b: bytes) -> str:
    if all(0x20 <= c < 0x7F for c in b):
        return b.decode("ascii")
    return "".join(map(_char, b.decode("utf-8", "replace")))


def read_name(msg: bytes, off: int):
    """The name at ``off``: ``(text, end, None)`` (``end``: the offset after
    the name where it starts, past its first pointer) or ``(None, 0,
    reason)``."""
    labels = []
    size = 1                              # the root's zero octet
    end = 0
    pos = off
    limit = off                           # a pointer must point before this
    n = len(msg)
    jumps = 0
    while True:
        if pos >= n:
            return None, 0, "dns_truncated"
        ln = msg[pos]
        top = ln & 0xC0
        if top == 0xC0:
            if pos + 1 >= n:
                return None, 0, "dns_truncated"
            target = ((ln & 0x3F) << 8) | msg[pos + 1]
            if not end:
                end = pos + 2
            if target >= limit:
                return None, 0, ("dns_compression_loop" if target <= pos
                                 else "dns_bad_pointer")
            jumps += 1
            if jumps > MAX_POINTERS:
                return None, 0, "dns_too_many_pointers"
            limit = target
            pos = target
            continue
        if top:
            return None, 0, "dns_bad_label"
        if ln == 0:
            if not end:
                end = pos + 1
            return (".".join(labels) if labels else "<Root>"), end, None
        size += ln + 1
        if size > MAX_NAME:
            return None, 0, "dns_name_too_long"
        if pos + 1 + ln > n:
            return None, 0, "dns_truncated"
        labels.append(_label(msg[pos + 1:pos + 1 + ln]))
        pos += 1 + ln


def inspect(payload: bytes, tcp: bool = False):
    """One DNS message (over TCP with its length prefix): ``(fields,
    reason)``."""
    try:
        msg = payload
        if tcp:
            if len(payload) < 2:
                return None, None
            size = (payload[0] << 8) | payload[1]
            msg = payload[2:2 + size]     # a message cut by the segment: what it has
            if size < 12:
                return None, "dns_truncated"
        if len(msg) < 12:
            return None, None
        flags = (msg[2] << 8) | msg[3]
        qd = (msg[4] << 8) | msg[5]
        fields = {"dns_answers": (msg[6] << 8) | msg[7]}
        if flags & 0x8000:
            fields["dns_rcode"] = flags & 0x000F
        if qd:
            name, end, reason = read_name(msg, 12)
            if reason:
                return None, reason
            if end + 4 > len(msg):
                return None, "dns_truncated"
            fields["dns_qname"] = name
            fields["dns_qtype"] = (msg[end] << 8) | msg[end + 1]
        return fields, None
    except Exception:               # a bug here must not stop a meter: counted, not raised
        return None, "dns_parser_error"
