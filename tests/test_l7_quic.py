"""QUIC Initials (nfflowd.l7.quic): key derivation and packet protection
against the worked examples of RFC 9001 (v1) and RFC 9369 (v2) Appendix A,
the fields against tshark's QUIC dissector (which decrypts Initials itself) on
the sample capture and on Initials built here (split CRYPTO streams,
coalesced packets, v2), and hostile input: no exception, a reason.
"""
from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfflowd.io.pcapfile import CaptureReader
from nfflowd.l7 import quic

PCAPS = Path(__file__).resolve().parent / "data" / "pcaps"
SAMPLE = PCAPS / "quic_initial-sample.pcap"
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")

# -- RFC 9001 Appendix A (v1) and RFC 9369 Appendix A (v2) ----------------------------
RFC_DCID = bytes.fromhex("8394c8f03e515708")
# A.2: the client's CRYPTO frame (a ClientHello for example.com), padded to 1162 bytes
RFC_CLIENT_PAYLOAD = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff") + bytes(917)
RFC_V1_HEADER = bytes.fromhex("c300000001088394c8f03e5157080000449e00000002")
RFC_V1_PACKET = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934")
RFC_V2_HEADER = bytes.fromhex("d36b3343cf088394c8f03e5157080000449e00000002")
RFC_V2_PACKET = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc")
# A.3: the server's Initial (ACK + ServerHello), protected with the server's keys
RFC_V1_SERVER_PACKET = bytes.fromhex(
    "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a"
    "5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3"
    "dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84"
    "022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc4"
    "2158407dd074ee")


# RFC 9001 A.1 (v1) and RFC 9369 A.1 (v2): client and server secrets, then
# (key, iv, hp) of the client and of the server
RFC_KEYS = {
    quic.VERSION_1: (
        "c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea",
        "3c199828fd139efd216c155ad844cc81fb82fa8d7446fa7d78be803acdda951b",
        ("1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c",
         "9f50449e04a0e810283a1e9933adedd2"),
        ("cf3a5331653c364c88f0f379b6067e37", "0ac1493ca1905853b0bba03e",
         "c206b8d9b9f0f37644430b490eeaa314")),
    quic.VERSION_2: (
        "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b",
        "0263db1782731bf4588e7e4d93b7463907cb8cd8200b5da55a8bd488eafc37c1",
        ("8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f",
         "45b95e15235d6f45a6b19cbcb0294ba9"),
        ("82db637861d55e1d011f19ea71d5d2a7", "dd13c276499c0249d3310652",
         "edf6d05c83121201b436e16877593c3a")),
}


@pytest.mark.parametrize("version", sorted(RFC_KEYS))
def test_rfc_keys(version):
    """The salts and labels: secrets, keys, IVs and header protection keys."""
    client, server, client_keys, server_keys = RFC_KEYS[version]
    assert [s.hex() for s in quic.initial_secrets(version, RFC_DCID)] == [client, server]
    for keys, is_server in ((client_keys, False), (server_keys, True)):
        got = quic.initial_key_material(version, RFC_DCID, server=is_server)
        assert tuple(k.hex() for k in got) == keys


# -- building Initials (the client's side of RFC 9001 section 5) ---------------------

def protect(header: bytes, payload: bytes, pn: int, version: int, dcid: bytes) -> bytes:
    """An Initial protected with the client's keys for ``dcid``: ``header``
    is the unprotected header ending with a packet number of (first byte &
    3) + 1 bytes (RFC 9001 sections 5.3, 5.4)."""
    key, iv, hp = quic.initial_key_material(version, dcid)
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = AESGCM(key).encrypt(nonce, payload, header)
    pnlen = (header[0] & 3) + 1
    sample = sealed[4 - pnlen:20 - pnlen]
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    out = bytearray(header)
    out[0] ^= mask[0] & 0x0F
    for i in range(pnlen):
        out[len(header) - pnlen + i] ^= mask[1 + i]
    return bytes(out) + sealed


def varint(v: int) -> bytes:
    for n, tag in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if v < 1 << (8 * n - 2):
            return (v | tag << (8 * n - 8)).to_bytes(n, "big")
    raise ValueError(v)


def initial(frames: bytes, *, version: int = quic.VERSION_1, dcid: bytes = RFC_DCID,
            scid: bytes = b"\x01\x02\x03\x04", pn: int = 0, pad_to: int = 0,
            token: bytes = b"", key_dcid: bytes | None = None) -> bytes:
    """A protected client Initial carrying ``frames``, padded with PADDING
    frames to ``pad_to`` bytes; keys from ``key_dcid`` (the first connection
    id) when the packet's own ``dcid`` is another."""
    ptype = 1 if version == quic.VERSION_2 else 0
    head = (bytes([0xC0 | ptype << 4 | 1]) + version.to_bytes(4, "big")
            + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
            + varint(len(token)) + token)
    size = len(head) + 2 + 2 + len(frames) + 16
    payload = frames + bytes(max(0, pad_to - size))
    header = head + (0x4000 | (2 + len(payload) + 16)).to_bytes(2, "big") + pn.to_bytes(2, "big")
    return protect(header, payload, pn, version, key_dcid or dcid)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def ext(etype: int, body: bytes) -> bytes:
    return struct.pack(">HH", etype, len(body)) + body


def client_hello(sni: str | None = "quic.example.net", user_agent: str | None = "nfflowd-test/1.0",
                 tp_ext: int = 57, key_share: int = 32) -> bytes:
    """A TLS 1.3 ClientHello handshake message as a QUIC client sends it:
    SNI, ALPN h3, supported_versions, a key share of ``key_share`` bytes
    (1216 for an X25519Kyber768 share makes it span two Initials) and the
    transport parameters (Google's user agent 0x3129 among them)."""
    tp = varint(0x04) + varint(4) + varint(1 << 20)           # initial_max_data
    if user_agent is not None:
        ua = user_agent.encode()
        tp += varint(quic.PARAM_GOOGLE_USER_AGENT) + varint(len(ua)) + ua
    exts = b""
    if sni is not None:
        name = sni.encode()
        exts += ext(0, struct.pack(">HBH", len(name) + 3, 0, len(name)) + name)
    exts += ext(16, b"\x00\x03\x02h3")
    exts += ext(43, b"\x02\x03\x04")
    exts += ext(10, b"\x00\x04\x63\x99\x00\x1d")
    exts += ext(13, b"\x00\x04\x04\x03\x08\x04")
    group = 0x6399 if key_share > 32 else 0x001D
    exts += ext(51, struct.pack(">HHH", key_share + 4, group, key_share) + bytes(range(256)) * (key_share // 256) + bytes(key_share % 256))
    exts += ext(tp_ext, tp)
    body = (b"\x03\x03" + bytes(range(32)) + b"\x00" + b"\x00\x06\x13\x01\x13\x02\x13\x03"
            + b"\x01\x00" + struct.pack(">H", len(exts)) + exts)
    return b"\x01" + len(body).to_bytes(3, "big") + body


def test_protect_reproduces_rfc_packets():
    """The builder the other tests use gives RFC 9001 A.2's and RFC 9369
    A.2's protected packets, byte for byte."""
    assert protect(RFC_V1_HEADER, RFC_CLIENT_PAYLOAD, 2, quic.VERSION_1, RFC_DCID) == RFC_V1_PACKET
    assert protect(RFC_V2_HEADER, RFC_CLIENT_PAYLOAD, 2, quic.VERSION_2, RFC_DCID) == RFC_V2_PACKET


def inspect(*datagrams: bytes) -> tuple[dict, list, quic.QuicState]:
    """Every datagram of one flow through one state: merged fields, reasons."""
    state = quic.QuicState()
    fields: dict = {}
    reasons = []
    for d in datagrams:
        f, r = quic.inspect_datagram(d, state)
        fields.update(f or {})
        if r is not None:
            reasons.append(r)
    return fields, reasons, state


def names(fields: dict, expected: dict) -> None:
    """All the fields, the server name and user agent from the TLS parser
    included (the version and the CRYPTO stream are checked before)."""
    assert fields == expected


@pytest.mark.parametrize("packet,version", [(RFC_V1_PACKET, quic.VERSION_1),
                                            (RFC_V2_PACKET, quic.VERSION_2)])
def test_rfc_client_initial(packet, version):
    fields, reasons, state = inspect(packet)
    assert state.stream() == RFC_CLIENT_PAYLOAD[4:4 + 0xF1]       # the CRYPTO frame's data
    assert fields["quic_version"] == version
    assert reasons == [] and state.done
    names(fields, {"quic_version": version, "quic_sni": "example.com"})


def test_server_initial_gives_version_only():
    """A server's Initial is protected with keys from the client's connection
    id, which its own header does not carry: the version, and a reason."""
    fields, reasons, state = inspect(RFC_V1_SERVER_PACKET)
    assert fields == {"quic_version": 1}
    assert reasons == ["quic_decrypt_failed"] and state.done


# -- the sample capture against tshark -----------------------------------------------

def udp_payloads(path: Path) -> list[bytes]:
    """The UDP payload of each Ethernet frame of a capture (IPv4 or IPv6
    without extension headers)."""
    out = []
    for _ts, linktype, data, _orig in CaptureReader(path):
        assert linktype == 1
        etype = int.from_bytes(data[12:14], "big")
        if etype == 0x0800:
            ihl = (data[14] & 0x0F) * 4
            assert data[23] == 17
            out.append(data[14 + ihl + 8:])
        else:
            assert etype == 0x86DD and data[20] == 17
            out.append(data[14 + 40 + 8:])
    return out


TSHARK = {"quic.version": "quic_version",
          "tls.handshake.extensions_server_name": "quic_sni",
          "tls.quic.parameter.google.user_agent": "quic_user_agent",
          "tls.handshake.length": "hello_length"}


def tshark_fields(path: Path) -> dict:
    """What tshark reads from a capture: the QUIC version, the ClientHello's
    server name, Google user agent and length (each field's values over all
    frames)."""
    res = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=a",
                          "-E", "aggregator=|"] + [a for f in TSHARK for a in ("-e", f)],
                         capture_output=True, text=True, timeout=60, check=True)
    out: dict = {}
    for line in res.stdout.splitlines():
        for name, value in zip(TSHARK.values(), line.split("\t")):
            for v in filter(None, value.split("|")):
                out.setdefault(name, set()).add(v if name.startswith("quic_") and name != "quic_version"
                                                else int(v, 0))
    return out


def against_tshark(path: Path, fields: dict, state: quic.QuicState) -> None:
    """The version and the ClientHello's length as tshark reads them, then
    the names."""
    want = tshark_fields(path)
    assert want.pop("hello_length") == {len(state.stream()) - 4}
    assert want["quic_version"] == {fields["quic_version"]}
    names(as_sets(fields), want)


def as_sets(fields: dict) -> dict:
    return {k: {v} for k, v in fields.items()}


@needs_tshark
def test_sample_capture_matches_tshark():
    """Chrome 92's draft-29 Initial: version, server name and user agent
    (transport parameters in extension 0xffa5) as tshark reads them."""
    payloads = udp_payloads(SAMPLE)
    fields, reasons, state = inspect(*payloads)
    assert reasons == [] and state.done
    assert b"\x00\x0ewww.google.com" in state.stream()
    assert fields["quic_version"] == 0xFF00001D
    against_tshark(SAMPLE, fields, state)


# -- Initials built here, read by tshark ---------------------------------------------

def write_pcap(path: Path, datagrams: list[bytes]) -> None:
    """An Ethernet/IPv4/UDP capture of the client's datagrams
    (198.51.100.10:50000 -> 203.0.113.10:443)."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i, d in enumerate(datagrams):
        udp = struct.pack(">HHHH", 50000, 443, 8 + len(d), 0) + d
        ip = bytearray(struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i, 0, 64, 17, 0,
                                   bytes([198, 51, 100, 10]), bytes([203, 0, 113, 10])))
        csum = sum(struct.unpack(">10H", ip))
        csum = (csum & 0xFFFF) + (csum >> 16)
        ip[10:12] = struct.pack(">H", ~((csum & 0xFFFF) + (csum >> 16)) & 0xFFFF)
        frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + bytes(ip) + udp
        out.append(struct.pack("<IIII", 1_700_000_000 + i, 0, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))


def split_hello(version: int) -> list[bytes]:
    """A ClientHello too large for one packet (a post-quantum key share),
    over two datagrams, each with its CRYPTO frames out of order and PING
    frames between them (as Chrome sends them)."""
    hello = client_hello(key_share=1216)
    cut = 700
    first = (crypto_frame(300, hello[300:cut]) + b"\x01" + crypto_frame(0, hello[:300]))
    second = (crypto_frame(cut + 200, hello[cut + 200:]) + b"\x01\x01"
              + crypto_frame(cut, hello[cut:cut + 200]))
    return [initial(first, version=version, pn=0, pad_to=1200),
            initial(second, version=version, pn=1, pad_to=1200)]


@needs_tshark
@pytest.mark.parametrize("version", [quic.VERSION_1, quic.VERSION_2])
def test_split_crypto_stream_matches_tshark(tmp_path, version):
    datagrams = split_hello(version)
    fields, reasons, state = inspect(*datagrams)
    assert reasons == [] and state.done
    assert state.stream() == client_hello(key_share=1216)
    write_pcap(tmp_path / "split.pcap", datagrams)
    against_tshark(tmp_path / "split.pcap", fields, state)
    names(fields, {"quic_version": version, "quic_sni": "quic.example.net",
                   "quic_user_agent": "nfflowd-test/1.0"})


def test_first_half_gives_version_then_the_rest():
    """The version comes with the first Initial; the names when the stream
    is whole; the flow is done only then."""
    one, two = split_hello(quic.VERSION_1)
    state = quic.QuicState()
    assert quic.inspect_datagram(one, state) == ({"quic_version": 1}, None)
    assert not state.done
    fields, reason = quic.inspect_datagram(two, state)
    assert reason is None and state.done and fields["quic_version"] == 1
    assert quic.inspect_datagram(two, state) == (None, None)
    names(fields, {"quic_version": 1, "quic_sni": "quic.example.net",
                   "quic_user_agent": "nfflowd-test/1.0"})


@needs_tshark
def test_coalesced_initials_match_tshark(tmp_path):
    """Two Initials coalesced in one datagram (RFC 9000 section 12.2), the
    ClientHello split between them, then a short-header packet's bytes."""
    hello = client_hello(sni="coalesced.example.org", user_agent=None)
    a = initial(crypto_frame(0, hello[:100]), pn=0)
    b = initial(crypto_frame(100, hello[100:]), pn=1)
    datagram = a + b + b"\x40" + bytes(range(40))
    fields, reasons, state = inspect(datagram)
    assert reasons == [] and state.stream() == hello
    write_pcap(tmp_path / "coalesced.pcap", [datagram])
    against_tshark(tmp_path / "coalesced.pcap", fields, state)
    names(fields, {"quic_version": 1, "quic_sni": "coalesced.example.org"})


def test_later_initial_with_the_servers_connection_id():
    """After the server answers, the client addresses it by the server's
    connection id but keeps the keys of its first one (RFC 9001 section
    5.2)."""
    hello = client_hello()
    first = initial(crypto_frame(0, hello[:200]), pn=0, pad_to=1200)
    later = initial(b"\x02\x00\x00\x00\x00" + crypto_frame(200, hello[200:]), pn=1,
                    dcid=b"\xaa" * 5, key_dcid=RFC_DCID, pad_to=1200)
    fields, reasons, state = inspect(first, later)
    assert reasons == [] and state.done and state.stream() == hello


def test_draft29_transport_parameters_extension():
    """Drafts carry the transport parameters in extension 0xffa5."""
    hello = client_hello(tp_ext=quic.EXT_TRANSPORT_PARAMETERS_DRAFT, user_agent="Chrome/x")
    fields, reasons, state = inspect(initial(crypto_frame(0, hello), version=0xFF00001D,
                                             pad_to=1200))
    assert reasons == [] and state.stream() == hello
    names(fields, {"quic_version": 0xFF00001D, "quic_sni": "quic.example.net",
                   "quic_user_agent": "Chrome/x"})


def test_ack_frames_are_walked():
    hello = client_hello()
    ack = b"\x02" + varint(5) + varint(0) + varint(1) + varint(0) + varint(1) + varint(2)
    ack_ecn = b"\x03" + varint(5) + varint(0) + varint(0) + varint(0) + varint(1) * 3
    fields, reasons, state = inspect(initial(ack + ack_ecn + crypto_frame(0, hello), pad_to=1200))
    assert reasons == [] and state.done and state.stream() == hello


# -- bounds and reasons ----------------------------------------------------------------

def test_not_quic():
    for payload in (b"", b"\x00" * 50, b"\x80\x00\x00\x00\x00" + bytes(40),   # version negotiation
                    b"\xc0\xfa\xce\xb0\x0c" + bytes(1200)):                   # unknown version
        state = quic.QuicState()
        assert quic.inspect_datagram(payload, state) == (None, None)


def test_unknown_version_ends_the_flow():
    state = quic.QuicState()
    quic.inspect_datagram(b"\xc0\x51\x30\x35\x30" + bytes(1200), state)   # gQUIC Q050
    assert state.done


def test_short_headers_only_end_after_max_datagrams():
    state = quic.QuicState()
    for i in range(quic.MAX_DATAGRAMS):
        assert not state.done
        assert quic.inspect_datagram(b"\x41" + bytes(100), state) == (None, None)
    assert state.done


def test_truncated_at_every_length():
    """Every prefix of a real Initial: no exception; from the header's end
    on, the version and a reason."""
    seen = set()
    for n in range(len(RFC_V1_PACKET)):
        fields, reasons, state = inspect(RFC_V1_PACKET[:n])
        assert state.done or n < 7
        seen.update(reasons)
        if n >= 7:
            assert fields == {"quic_version": 1}
            assert reasons == ["quic_truncated"]
    assert seen == {"quic_truncated"}


def test_corrupt_tag():
    bad = bytearray(RFC_V1_PACKET)
    bad[-1] ^= 1
    fields, reasons, state = inspect(bytes(bad))
    assert fields == {"quic_version": 1} and reasons == ["quic_decrypt_failed"] and state.done


def test_incomplete_hello_after_max_datagrams():
    hello = client_hello()
    d = initial(crypto_frame(0, hello[:100]), pad_to=1200)
    fields, reasons, state = inspect(*[d] * quic.MAX_DATAGRAMS)
    assert fields == {"quic_version": 1} and reasons == ["quic_incomplete"] and state.done


def test_crypto_too_long():
    big = b"\x01" + (quic.MAX_CRYPTO).to_bytes(3, "big") + bytes(100)
    fields, reasons, state = inspect(initial(crypto_frame(0, big), pad_to=1200))
    assert fields == {"quic_version": 1} and reasons == ["quic_crypto_too_long"] and state.done


def test_crypto_beyond_the_bound_is_not_kept():
    state = quic.QuicState()
    far = crypto_frame(quic.MAX_CRYPTO + 5, b"x" * 100) + crypto_frame(quic.MAX_CRYPTO - 10, b"y" * 100)
    fields, reason = quic.inspect_datagram(initial(far, pad_to=1200), state)
    assert fields == {"quic_version": 1} and reason is None
    assert state.pieces == [(quic.MAX_CRYPTO - 10, b"y" * 10)]


def test_not_a_client_hello():
    msg = b"\x02\x00\x00\x04abcd"           # a ServerHello's type
    fields, reasons, _ = inspect(initial(crypto_frame(0, msg), pad_to=1200))
    assert reasons == ["quic_not_client_hello"] and fields == {"quic_version": 1}


def test_tls_parser_reason_comes_through():
    """A whole ClientHello the TLS parser refuses: its reason, the version."""
    hello = bytearray(client_hello())
    at = hello.index(b"quic.example.net") - 2       # the name's length: past its extension
    hello[at:at + 2] = b"\x7f\xff"
    fields, reasons, state = inspect(initial(crypto_frame(0, bytes(hello)), pad_to=1200))
    assert fields == {"quic_version": 1} and reasons == ["tls_bad_extension"] and state.done


def test_frame_past_the_packet():
    frames = b"\x06\x00\x44\x00abc"          # CRYPTO claiming 1024 bytes
    fields, reasons, _ = inspect(initial(frames))
    assert reasons == ["quic_bad_frame"] and fields == {"quic_version": 1}


def test_other_frames_end_the_walk():
    hello = client_hello()
    fields, reasons, state = inspect(initial(crypto_frame(0, hello[:50]) + b"\x1c" + bytes(30)
                                             + crypto_frame(50, hello[50:]), pad_to=1200))
    assert fields == {"quic_version": 1} and reasons == [] and not state.done


def test_transport_parameters():
    tp = varint(1) + varint(2) + b"\x40\x10" + varint(0x3129) + varint(3) + b"abc" + varint(9) + varint(50)
    assert quic.transport_parameters(tp) == {1: b"\x40\x10", 0x3129: b"abc"}


# -- fuzzing: nothing raises, work stays bounded -------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=1500))
def test_fuzz_random_bytes(data):
    for server in (False, True):
        state = quic.QuicState()
        for _ in range(2):
            fields, reason = quic.inspect_datagram(data, state, server=server)
            assert fields is None or isinstance(fields, dict)
            assert reason is None or isinstance(reason, str)


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(RFC_V1_PACKET) - 1), st.integers(1, 255)),
                min_size=1, max_size=8))
def test_fuzz_mutated_real_initial(flips):
    data = bytearray(RFC_V1_PACKET)
    for at, x in flips:
        data[at] ^= x
    fields, reason = quic.inspect_datagram(bytes(data), quic.QuicState())
    assert fields is None or isinstance(fields, dict)


@FUZZ
@given(st.binary(max_size=1100), st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)),
                                          max_size=8))
def test_fuzz_decrypted_payloads(frames, flips):
    """Hostile payloads behind a valid AEAD tag: random frames, and the real
    ClientHello mutated, reach the frame walker and the TLS parser."""
    hello = bytearray(RFC_CLIENT_PAYLOAD[:245])
    for at, x in flips:
        hello[at % len(hello)] ^= x
    for payload in (frames, bytes(hello)):
        if len(payload) < 20:
            payload += bytes(20)
        fields, reason = quic.inspect_datagram(initial(payload), quic.QuicState())
        assert fields is None or isinstance(fields, dict)
        assert reason is None or isinstance(reason, str)


def test_server_flow_gives_version_without_a_reason():
    """Told the flow is the server's, the version alone, and no decryption
    failure to count."""
    state = quic.QuicState()
    assert quic.inspect_datagram(RFC_V1_SERVER_PACKET, state, server=True) == ({"quic_version": 1}, None)
    assert state.done
    state = quic.QuicState()
    for _ in range(quic.MAX_DATAGRAMS):
        assert quic.inspect_datagram(b"\x41" + bytes(30), state, server=True) == (None, None)
    assert state.done

