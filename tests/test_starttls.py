"""STARTTLS dialogues: reply parsing on known bytes, each dialogue against a scripted peer, and the
whole probe through a loopback server that speaks SMTP then TLS, plus hostile peers.

The real servers (postfix, dovecot, slapd, ...) are in test_starttls_real.py."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress

import pytest
from pki import Pki, write_key, write_pem

from textfile_probe import config, starttls
from textfile_probe.config import Target
from textfile_probe.errors import Stage
from textfile_probe.probe import probe
from textfile_probe.starttls import StartTlsError


class Scripted:
    """A Stream fed from a server script: after each client write, the next reply is available."""

    def __init__(self, greeting: bytes, replies: Sequence[bytes]) -> None:
        self.buffer = greeting
        self.replies = list(replies)
        self.written: list[bytes] = []

    async def read_line(self) -> bytes:
        end = self.buffer.find(b"\n")
        if end < 0:
            raise StartTlsError("protocol_error", "script ran dry")
        line, self.buffer = self.buffer[: end + 1], self.buffer[end + 1 :]
        return line

    async def read_exactly(self, count: int) -> bytes:
        if len(self.buffer) < count:
            raise StartTlsError("protocol_error", "script ran dry")
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    async def read_some(self) -> bytes:
        if not self.buffer:
            raise StartTlsError("protocol_error", "script ran dry")
        data, self.buffer = self.buffer, b""
        return data

    async def write(self, data: bytes) -> None:
        self.written.append(data)
        if self.replies:
            self.buffer += self.replies.pop(0)


def dialogue(protocol: str, greeting: bytes, replies: Sequence[bytes], domain: str = "example.org") -> Scripted:
    stream = Scripted(greeting, replies)
    asyncio.run(starttls.PROTOCOLS[protocol](stream, domain))
    return stream


def refused(protocol: str, greeting: bytes, replies: Sequence[bytes]) -> str:
    with pytest.raises(StartTlsError) as caught:
        dialogue(protocol, greeting, replies)
    assert caught.value.stage is Stage.STARTTLS
    return caught.value.reason


SMTP_GREETING = b"220-mail.example.org ESMTP\r\n220 second greeting line\r\n"
EHLO_TLS = b"250-mail.example.org\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"


def test_smtp_dialogue() -> None:
    stream = dialogue("smtp", SMTP_GREETING, [EHLO_TLS, b"220 2.0.0 Ready to start TLS\r\n"])
    assert stream.written == [b"EHLO textfile-probe\r\n", b"STARTTLS\r\n"]


def test_smtp_not_offered_and_rejected() -> None:
    assert refused("smtp", SMTP_GREETING, [b"250-mx\r\n250 8BITMIME\r\n"]) == "not_offered"
    assert refused("smtp", SMTP_GREETING, [EHLO_TLS, b"454 4.7.0 TLS not available\r\n"]) == "rejected"
    assert refused("smtp", b"554 go away\r\n", []) == "rejected"
    assert refused("smtp", b"HTTP/1.1 400 Bad Request\r\n", []) == "protocol_error"


def test_lmtp_says_lhlo() -> None:
    stream = dialogue("lmtp", b"220 lmtp ready\r\n", [EHLO_TLS, b"220 go\r\n"])
    assert stream.written[0] == b"LHLO textfile-probe\r\n"


def test_imap_dialogue_with_untagged_noise() -> None:
    stream = dialogue(
        "imap",
        b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] Dovecot ready.\r\n",
        [
            b"* CAPABILITY IMAP4rev1 SASL-IR STARTTLS LOGINDISABLED\r\na1 OK Pre-login capabilities listed.\r\n",
            b"a2 OK Begin TLS negotiation now.\r\n",
        ],
    )
    assert stream.written == [b"a1 CAPABILITY\r\n", b"a2 STARTTLS\r\n"]
    caps_without = b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\na1 OK done\r\n"
    assert refused("imap", b"* OK hi\r\n", [caps_without]) == "not_offered"
    assert refused("imap", b"* OK hi\r\n", [b"* CAPABILITY STARTTLS\r\na1 OK\r\n", b"a2 NO not now\r\n"]) == "rejected"


def test_pop3_dialogue() -> None:
    capa = b"+OK\r\nCAPA\r\nTOP\r\nSTLS\r\nUIDL\r\n.\r\n"
    stream = dialogue("pop3", b"+OK Dovecot ready.\r\n", [capa, b"+OK Begin TLS negotiation now.\r\n"])
    assert stream.written == [b"CAPA\r\n", b"STLS\r\n"]
    assert refused("pop3", b"+OK hi\r\n", [b"+OK\r\nTOP\r\n.\r\n"]) == "not_offered"


def test_ftp_dialogue() -> None:
    stream = dialogue("ftp", b"220-Welcome\r\n220 (vsFTPd 3.0.3)\r\n", [b"234 Proceed with negotiation.\r\n"])
    assert stream.written == [b"AUTH TLS\r\n"]
    assert refused("ftp", b"220 hi\r\n", [b"530 Please login with USER and PASS.\r\n"]) == "not_offered"


def test_nntp_dialogue() -> None:
    caps = b"101 Capability list:\r\nVERSION 2\r\nREADER\r\nSTARTTLS\r\n.\r\n"
    stream = dialogue("nntp", b"200 news.example.org InterNetNews ready\r\n", [caps, b"382 Begin TLS\r\n"])
    assert stream.written == [b"CAPABILITIES\r\n", b"STARTTLS\r\n"]
    assert refused("nntp", b"200 hi\r\n", [b"101 caps\r\nREADER\r\n.\r\n"]) == "not_offered"


def test_sieve_dialogue() -> None:
    greeting = b'"IMPLEMENTATION" "Dovecot Pigeonhole"\r\n"SIEVE" "fileinto"\r\n"STARTTLS"\r\nOK "Ready."\r\n'
    stream = dialogue("sieve", greeting, [b'OK "Begin TLS negotiation now."\r\n'])
    assert stream.written == [b"STARTTLS\r\n"]
    assert refused("sieve", b'"IMPLEMENTATION" "x"\r\nOK "Ready."\r\n', []) == "not_offered"


def test_irc_dialogue_asks_cap_then_skips_notices() -> None:
    notice = b":irc.example.org NOTICE * :*** Looking up your hostname\r\n"
    caps = b":irc.example.org CAP * LS * :multi-prefix sasl\r\n:irc.example.org CAP * LS :tls userhost-in-names\r\n"
    go = notice + b":irc.example.org 670 * :STARTTLS successful, go ahead\r\n"
    assert dialogue("irc", b"", [notice + caps, go]).written == [b"CAP LS 302\r\n", b"STARTTLS\r\n"]
    no_tls = b":irc.example.org CAP * LS :multi-prefix sasl\r\n"
    assert refused("irc", b"", [no_tls]) == "not_offered"
    assert refused("irc", b"", [caps, b":irc.example.org 691 * :STARTTLS failed\r\n"]) == "rejected"
    # A server without CAP answers 421; STARTTLS is then tried directly.
    unknown_cap = b":old.example.org 421 * CAP :Unknown command\r\n"
    assert dialogue("irc", b"", [unknown_cap, go]).written[-1] == b"STARTTLS\r\n"
    assert refused("irc", b"", [unknown_cap, b":old.example.org 421 * STARTTLS :Unknown command\r\n"]) == "not_offered"


LDAP_SUCCESS = bytes.fromhex("300c02010178070a010004000400")
LDAP_SUCCESS_WITH_NAME = (
    bytes.fromhex("302402010178 1f0a010004000400 8a16".replace(" ", "")) + starttls.LDAP_STARTTLS_OID
)
LDAP_PROTOCOL_ERROR = bytes.fromhex("300c02010178070a010204000400")


def test_ldap_request_bytes() -> None:
    # LDAPMessage(1, ExtendedRequest(requestName=1.3.6.1.4.1.1466.20037)), as RFC 4511 encodes it.
    assert bytes.fromhex("301d02010177188016") + b"1.3.6.1.4.1.1466.20037" == starttls.LDAP_STARTTLS_REQUEST


def test_ldap_dialogue() -> None:
    assert dialogue("ldap", b"", [LDAP_SUCCESS]).written == [starttls.LDAP_STARTTLS_REQUEST]
    dialogue("ldap", b"", [LDAP_SUCCESS_WITH_NAME])
    assert refused("ldap", b"", [LDAP_PROTOCOL_ERROR]) == "not_offered"
    assert refused("ldap", b"", [bytes.fromhex("300c02010178070a013204000400")]) == "rejected"  # 50
    assert refused("ldap", b"", [b"\x04\x01x"]) == "protocol_error"


def test_postgres_dialogue() -> None:
    assert dialogue("postgres", b"", [b"S"]).written == [struct.pack("!II", 8, 80877103)]
    assert refused("postgres", b"", [b"N"]) == "not_offered"
    assert refused("postgres", b"", [b"E"]) == "rejected"


def mysql_greeting(capabilities: int) -> bytes:
    payload = (
        b"\x0a" + b"10.11.6-MariaDB\x00" + struct.pack("<I", 7) + b"abcdefgh" + b"\x00"
        + struct.pack("<H", capabilities & 0xFFFF) + b"\x21" + struct.pack("<H", 2)
        + struct.pack("<H", capabilities >> 16) + b"\x15" + b"\x00" * 10 + b"ijklmnopqrst\x00"
    )  # fmt: skip
    return len(payload).to_bytes(3, "little") + b"\x00" + payload


def test_mysql_dialogue() -> None:
    stream = dialogue("mysql", mysql_greeting(0xF7FF | starttls.MYSQL_CLIENT_SSL), [])
    (request,) = stream.written
    assert request[:4] == b"\x20\x00\x00\x01"  # 32-byte payload, sequence 1
    assert struct.unpack("<I", request[4:8])[0] & starttls.MYSQL_CLIENT_SSL
    assert refused("mysql", mysql_greeting(0xF7FF & ~starttls.MYSQL_CLIENT_SSL), []) == "not_offered"
    error = b"\xff\x6a\x04Host '127.0.0.1' is blocked"
    assert refused("mysql", len(error).to_bytes(3, "little") + b"\x00" + error, []) == "rejected"


XMPP_HEADER = (
    b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' "
    b"id='x1' from='example.org' version='1.0'>"
)
TLS_FEATURE = b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"


def test_xmpp_dialogue() -> None:
    features = XMPP_HEADER + b"<stream:features>" + TLS_FEATURE + b"</stream:features>"
    stream = dialogue("xmpp", b"", [features, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"])
    assert b"to='example.org'" in stream.written[0] and b"xmlns='jabber:client'" in stream.written[0]
    assert stream.written[1] == b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"
    server = dialogue("xmpp-server", b"", [features, b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"])
    assert b"xmlns='jabber:server'" in server.written[0]
    plain = XMPP_HEADER + b"<stream:features><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></stream:features>"
    assert refused("xmpp", b"", [plain]) == "not_offered"
    assert refused("xmpp", b"", [features, b"<failure xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>"]) == "rejected"
    assert refused("xmpp", b"", [b"<<<not xml"]) == "protocol_error"


def test_ports_infer_protocols_and_none_forces_plain_tls() -> None:
    loaded = config.parse(
        "targets:\n"
        "  - {address: 'mx:25'}\n  - {address: 'mx:587'}\n  - {address: 'db:5432'}\n"
        "  - {address: 'ldap:389'}\n  - {address: 'ldaps:636'}\n  - {address: 'imap:993'}\n"
        "  - {address: 'mx2:25', starttls: none}\n  - {address: 'odd:2525', starttls: smtp}\n"
    )
    assert [t.starttls for t in loaded.targets] == ["smtp", "smtp", "postgres", "ldap", "none", "none", "none", "smtp"]


# -- end to end: a loopback peer that speaks SMTP and then TLS, and hostile peers ----------------


@contextmanager
def peer(serve: Callable[[socket.socket], None]) -> Iterator[int]:
    """A one-connection-at-a-time loopback server running `serve` per connection, in a thread."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                with suppress(OSError, ssl.SSLError):
                    serve(conn)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


@pytest.fixture(scope="module")
def server_tls(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, str]:
    directory = tmp_path_factory.mktemp("smtp")
    leaf = pki.leaf()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(
        write_pem(directory / "chain.pem", leaf, pki.intermediate), write_key(directory / "k.pem", leaf)
    )
    return ctx, str(write_pem(directory / "root.pem", pki.root))


def smtp_then_tls(ctx: ssl.SSLContext) -> Callable[[socket.socket], None]:
    def serve(conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        conn.sendall(SMTP_GREETING)
        reader.readline()
        conn.sendall(EHLO_TLS)
        reader.readline()
        conn.sendall(b"220 Ready to start TLS\r\n")
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    return serve


def smtp_target(port: int, trust: str, timeout: float = 3.0) -> Target:
    return Target(
        name="mx", host="127.0.0.1", port=port, server_name="localhost", ca_file=trust, starttls="smtp", timeout=timeout
    )


def test_probe_through_smtp_starttls(server_tls: tuple[ssl.SSLContext, str]) -> None:
    ctx, trust = server_tls
    with peer(smtp_then_tls(ctx)) as port:
        result = asyncio.run(probe(smtp_target(port, trust)))
    assert result.success, result
    assert [name for name, _ in result.phases] == ["dns", "connect", "starttls", "handshake"]
    assert result.peer_chain[0].subject_cn == "localhost"


def test_endless_line_is_bounded(server_tls: tuple[ssl.SSLContext, str]) -> None:
    def endless(conn: socket.socket) -> None:
        for _ in range(100):  # at most 6.4 MB; the client must give up long before
            conn.sendall(b"2" * 65536)

    with peer(endless) as port:
        result = asyncio.run(probe(smtp_target(port, server_tls[1])))
    assert (result.stage, result.reason) == (Stage.STARTTLS, "protocol_error")


def test_huge_multiline_banner_is_bounded(server_tls: tuple[ssl.SSLContext, str]) -> None:
    def banner(conn: socket.socket) -> None:
        for _ in range(100_000):  # up to 1.6 GB of "220-" lines if nobody stops reading
            conn.sendall(b"220-" + b"x" * 12 + b"\r\n")

    started = time.monotonic()
    with peer(banner) as port:
        result = asyncio.run(probe(smtp_target(port, server_tls[1])))
    assert (result.stage, result.reason) == (Stage.STARTTLS, "protocol_error")
    assert time.monotonic() - started < 5


def test_dripping_peer_times_out_in_starttls(server_tls: tuple[ssl.SSLContext, str]) -> None:
    def drip(conn: socket.socket) -> None:
        for byte in b"220 slow":
            conn.sendall(bytes([byte]))
            time.sleep(0.3)

    with peer(drip) as port:
        result = asyncio.run(probe(smtp_target(port, server_tls[1], timeout=1.0)))
    assert (result.stage, result.reason) == (Stage.STARTTLS, "timeout")


def test_cli_starttls_flag(server_tls: tuple[ssl.SSLContext, str], capsys: pytest.CaptureFixture[str]) -> None:
    from textfile_probe.cli import main

    ctx, trust = server_tls
    with peer(smtp_then_tls(ctx)) as port:
        code = main(
            ["probe", f"127.0.0.1:{port}", "--starttls", "smtp", "--ca-file", trust, "--server-name", "localhost"]
        )
    assert code == 0, capsys.readouterr()
    assert "starttls" in capsys.readouterr().out
