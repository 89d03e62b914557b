"""HTTP/1.x: a request's method, Host, path and User-Agent; a response's
status.

``inspect(payload)`` takes the first payload of a TCP direction and returns
``(fields, reason)``: the fields named as ``FlowBatch.l7`` names them
(``http_method``, ``http_host``, ``http_path``, ``http_user_agent``;
``http_status``), ``(None, None)`` when the payload is not HTTP/1.x, a reason
(``REASONS``) when it starts like HTTP but its first line is malformed.
Headers are read up to the end of the header block or of ``MAX_HEAD`` bytes,
whichever comes first (a header block cut by the segment gives the headers
it has).  The path is the request target as the request line has it
(tshark's ``http.request.uri``); strings as tshark shows them (ASCII, any
other byte U+FFFD; a header's value without its leading blanks).  Sans-IO,
never raises.
"""

from __future__ import annotations

__all__ = ["inspect", "METHODS", "MAX_HEAD", "REASONS"]

# bytes of a payload read for the request/status line and the headers
MAX_HEAD = 8192
METHODS = frozenset((b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"CONNECT",
                     b"PATCH", b"TRACE"))
REASONS = ("http_bad_request_line", "http_bad_status_line", "http_parser_error")


def _text(b: bytes) -> str:
    """As tshark shows HTTP's strings: ASCII, each other byte U+FFFD."""
    return b.decode("ascii", "replace")


def _target(b: bytes) -> bool:
    """A request target: no blank, no control character."""
    return all(c > 0x20 and c != 0x7F for c in b)


def _headers(head: bytes, fields: dict, wanted: dict) -> None:
    """The wanted headers of the lines of ``head`` after the first: the
    first of each name, its value stripped."""
    for line in head.split(b"\n")[1:]:
        if line in (b"", b"\r"):
            break
        colon = line.find(b":")
        if colon <= 0:
            continue
        key = wanted.get(line[:colon].strip().lower())
        if key is not None and key not in fields:
            # tshark's value: leading blanks dropped, trailing ones kept
            fields[key] = _text(line[colon + 1:].rstrip(b"\r").lstrip(b" \t"))


_REQUEST_HEADERS = {b"host": "http_host", b"user-agent": "http_user_agent"}


def inspect(payload: bytes):
    """The first payload of a TCP direction: ``(fields, reason)``."""
    try:
        head = payload[:MAX_HEAD]
        status = head.startswith(b"HTTP/1.")
        sp = head.find(b" ", 0, 9)
        if sp < 3 and not status:
            return None, None
        token = head[:sp]
        eol = head.find(b"\n")
        line = head[:eol] if eol >= 0 else head
        if line.endswith(b"\r"):
            line = line[:-1]
        if status:
            parts = line.split(b" ", 2)
            if (len(parts) < 2 or len(parts[0]) != 8 or not parts[0][7:8].isdigit()
                    or len(parts[1]) != 3 or not parts[1].isdigit()):
                return None, "http_bad_status_line"
            return {"http_status": int(parts[1])}, None
        if token not in METHODS:
            return None, None
        parts = line.split(b" ")
        if (len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or len(parts[2]) != 8
                or not parts[1] or not _target(parts[1])):
            return None, "http_bad_request_line"
        fields = {"http_method": token.decode(), "http_path": _text(parts[1])}
        if eol >= 0:
            _headers(head, fields, _REQUEST_HEADERS)
        return fields, None
    except Exception:               # a bug here must not stop a meter: counted, not raised
        return None, "http_parser_error"
