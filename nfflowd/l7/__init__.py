"""Application-layer fields of metered flows: the parsers (tls, quic, http,
dns) and the meter's per-flow inspection (``inspect``)."""
