"""Application-layer fields of metered flows: the parsers (tls, quic, http,
dns) and the meter's per-flow inspection (``inspect``).

Every parser takes the payload bytes of one packet (pure Python, sans-IO),
returns ``(fields, reason)`` and never raises: ``fields`` a dict named as
``FlowBatch.l7`` names them, or None; ``reason`` a short string the caller
counts (each module's ``REASONS``) when the payload looked like its protocol
but could not be read.  ``(None, None)``: not this protocol.

- ``tls.inspect(payload)``: a TCP direction's first payload (TLS records).
  ``"tls_truncated"`` with ``tls.needed(payload) > len(payload)``: a
  ClientHello longer than the segment; join the next and retry.
  ``tls.parse_client_hello(message)`` / ``parse_server_hello``: a bare
  Handshake message (QUIC's CRYPTO stream), giving the hello object.
- ``http.inspect(payload)``: an HTTP/1.x request or response head.
- ``dns.inspect(payload, tcp=False)``: one DNS message (over TCP with its
  length prefix).
- ``quic.inspect_datagram(payload, state, server=False)``: a QUIC client's
  Initial packets, over a flow's first datagrams (its own state object).

Which parser a payload goes to: ``inspect.kind_of(protocols, proto, sport,
dport, first bytes)`` (a few byte and port comparisons, so a payload that is
none of these costs next to nothing), and ``inspect.Parsers.parse`` calls
it.  The parsers are imported when first used: ``nfflowd.l7`` itself
imports nothing.
"""
