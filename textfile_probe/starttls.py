"""STARTTLS: the plain-text (or binary) dialogue that turns a connection into a TLS one.

Strategy: every protocol is one async function over a `Stream` (the I/O is passed in, so tests
drive the dialogues with recorded bytes); the pure parsing of replies lives in small functions
beside them. Simple command/response protocols share one line-based helper and are a few constants
in `PROTOCOLS`; only LDAP (BER), PostgreSQL and MySQL (binary packets) and XMPP (an XML stream)
need code of their own. Replies are read line by line or packet by packet until the expected
answer; nothing assumes one recv holds a reply. A hostile peer is bounded by size here (lines,
total bytes) and by the target's timeout in the caller. Failures raise `StartTlsError` with one of
the reasons `not_offered`, `rejected` or `protocol_error`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Protocol
from xml.etree.ElementTree import Element, ParseError, XMLPullParser

from .errors import ProbeError, Stage

MAX_LINE = 8192  # bytes in one line of a reply
MAX_TOTAL = 256 * 1024  # bytes a peer may send before TLS starts

# Well-known ports where the protocol needs STARTTLS; implicit-TLS ports (465, 636, 993, ...) are absent.
PORTS = {
    25: "smtp", 587: "smtp", 24: "lmtp", 143: "imap", 110: "pop3", 21: "ftp", 389: "ldap",
    5432: "postgres", 3306: "mysql", 5222: "xmpp", 5269: "xmpp-server", 119: "nntp",
    4190: "sieve", 6667: "irc",
}  # fmt: skip


class StartTlsError(ProbeError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(Stage.STARTTLS, reason, detail)


class Stream(Protocol):
    """What a dialogue needs from the connection."""

    async def read_line(self) -> bytes: ...
    async def read_exactly(self, count: int) -> bytes: ...
    async def read_some(self) -> bytes: ...
    async def write(self, data: bytes) -> None: ...


class SocketStream:
    """A Stream over a connected non-blocking socket, with the size bounds applied."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._buffer = b""
        self._received = 0

    async def _fill(self) -> None:
        data = await self._loop.sock_recv(self._sock, 16384)
        if not data:
            raise StartTlsError("protocol_error", "peer closed the connection during STARTTLS")
        self._received += len(data)
        if self._received > MAX_TOTAL:
            raise StartTlsError("protocol_error", f"peer sent more than {MAX_TOTAL} bytes before TLS")
        self._buffer += data

    async def read_line(self) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_LINE:
                raise StartTlsError("protocol_error", f"a line longer than {MAX_LINE} bytes")
            await self._fill()
        line, self._buffer = self._buffer[: end + 1], self._buffer[end + 1 :]
        return line

    async def read_exactly(self, count: int) -> bytes:
        while len(self._buffer) < count:
            await self._fill()
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    async def read_some(self) -> bytes:
        if not self._buffer:
            await self._fill()
        data, self._buffer = self._buffer, b""
        return data

    async def write(self, data: bytes) -> None:
        await self._loop.sock_sendall(self._sock, data)

    def leftover(self) -> bytes:
        """Bytes received after the dialogue ended: the start of the server's TLS, if any."""
        return self._buffer


# -- line protocols: SMTP, LMTP, FTP, NNTP (numeric replies) ----------------------------------


async def numeric_reply(stream: Stream) -> tuple[int, list[str]]:
    """Read a (possibly multi-line, "250-...") numeric reply; return its code and text lines."""
    lines: list[str] = []
    while True:
        line = (await stream.read_line()).decode("utf-8", "replace").rstrip("\r\n")
        if len(line) < 3 or not line[:3].isdigit():
            raise StartTlsError("protocol_error", f"unexpected reply {line[:80]!r}")
        lines.append(line[4:])
        if len(line) == 3 or line[3] != "-":
            return int(line[:3]), lines


async def _command(stream: Stream, command: bytes) -> tuple[int, list[str]]:
    await stream.write(command + b"\r\n")
    return await numeric_reply(stream)


async def _greeting(stream: Stream) -> None:
    code, lines = await numeric_reply(stream)
    if code // 100 != 2:
        raise StartTlsError("rejected", f"greeting {code} {' '.join(lines)[:120]}")


def _go(code: int, lines: list[str], wanted: int) -> None:
    if code != wanted:
        raise StartTlsError("rejected", f"{code} {' '.join(lines)[:120]}")


async def _smtp(stream: Stream, _domain: str, hello: bytes = b"EHLO") -> None:
    await _greeting(stream)
    code, lines = await _command(stream, hello + b" textfile-probe")
    _go(code, lines, 250)
    if not any(line.upper().split(" ")[0] == "STARTTLS" for line in lines):
        raise StartTlsError("not_offered", "STARTTLS is not in the EHLO reply")
    _go(*await _command(stream, b"STARTTLS"), wanted=220)


async def _lmtp(stream: Stream, domain: str) -> None:
    await _smtp(stream, domain, hello=b"LHLO")


async def _ftp(stream: Stream, _domain: str) -> None:
    await _greeting(stream)
    code, lines = await _command(stream, b"AUTH TLS")
    if code in (500, 502, 504, 530):  # unknown, not implemented, not for this parameter, TLS off
        raise StartTlsError("not_offered", f"{code} {' '.join(lines)[:120]}")
    _go(code, lines, 234)


async def _nntp(stream: Stream, _domain: str) -> None:
    await _greeting(stream)
    code, _ = await _command(stream, b"CAPABILITIES")
    capabilities = await _dot_terminated(stream) if code == 101 else []
    if not any(c.upper().split(" ")[0] == "STARTTLS" for c in capabilities):
        raise StartTlsError("not_offered", "STARTTLS is not in CAPABILITIES")
    _go(*await _command(stream, b"STARTTLS"), wanted=382)


async def _dot_terminated(stream: Stream) -> list[str]:
    lines: list[str] = []
    while (line := (await stream.read_line()).decode("utf-8", "replace").rstrip("\r\n")) != ".":
        lines.append(line)
    return lines


# -- line protocols with their own reply shapes: POP3, IMAP, ManageSieve, IRC -----------------


async def _text_line(stream: Stream) -> str:
    return (await stream.read_line()).decode("utf-8", "replace").rstrip("\r\n")


async def _pop3(stream: Stream, _domain: str) -> None:
    if not (await _text_line(stream)).startswith("+OK"):
        raise StartTlsError("rejected", "greeting is not +OK")
    await stream.write(b"CAPA\r\n")
    capabilities = await _dot_terminated(stream) if (await _text_line(stream)).startswith("+OK") else []
    if "STLS" not in (c.upper() for c in capabilities):
        raise StartTlsError("not_offered", "STLS is not in CAPA")
    await stream.write(b"STLS\r\n")
    reply = await _text_line(stream)
    if not reply.startswith("+OK"):
        raise StartTlsError("rejected", reply[:120])


async def _imap_tagged(stream: Stream, tag: str) -> tuple[str, list[str]]:
    untagged: list[str] = []
    while not (line := await _text_line(stream)).startswith(tag + " "):
        untagged.append(line)
    return line[len(tag) + 1 :], untagged


async def _imap(stream: Stream, _domain: str) -> None:
    greeting = await _text_line(stream)
    if not greeting.startswith("* OK") and not greeting.startswith("* PREAUTH"):
        raise StartTlsError("rejected", greeting[:120])
    await stream.write(b"a1 CAPABILITY\r\n")
    status, untagged = await _imap_tagged(stream, "a1")
    words = " ".join(line for line in untagged if line.upper().startswith("* CAPABILITY")).upper().split()
    if not status.upper().startswith("OK") or "STARTTLS" not in words:
        raise StartTlsError("not_offered", "STARTTLS is not in CAPABILITY")
    await stream.write(b"a2 STARTTLS\r\n")
    status, _ = await _imap_tagged(stream, "a2")
    if not status.upper().startswith("OK"):
        raise StartTlsError("rejected", status[:120])


async def _sieve_response(stream: Stream) -> tuple[str, list[str]]:
    """ManageSieve: capability lines, then a line starting OK, NO or BYE."""
    lines: list[str] = []
    while True:
        line = await _text_line(stream)
        if line.upper().startswith(("OK", "NO", "BYE")):
            return line, lines
        lines.append(line)


async def _sieve(stream: Stream, _domain: str) -> None:
    status, capabilities = await _sieve_response(stream)
    if not status.upper().startswith("OK"):
        raise StartTlsError("rejected", status[:120])
    if not any(c.strip().upper() == '"STARTTLS"' for c in capabilities):
        raise StartTlsError("not_offered", "STARTTLS is not among the capabilities")
    await stream.write(b"STARTTLS\r\n")
    status, _ = await _sieve_response(stream)
    if not status.upper().startswith("OK"):
        raise StartTlsError("rejected", status[:120])


_IRC_GO, _IRC_NO, _IRC_UNKNOWN = "670", "691", "421"


async def _irc_reply(stream: Stream) -> tuple[str, list[str]]:
    """The next numeric or CAP reply, skipping notices ("Looking up your hostname...")."""
    for _ in range(200):
        words = (await _text_line(stream)).split(" ")
        if words[0] == "ERROR":
            raise StartTlsError("rejected", " ".join(words)[:120])
        if len(words) > 1 and words[0].startswith(":") and (words[1].isdigit() or words[1] == "CAP"):
            return words[1], words[2:]
    raise StartTlsError("protocol_error", "no reply from the IRC server")


async def _irc(stream: Stream, _domain: str) -> None:
    # IRCv3: a server that can do STARTTLS lists "tls" in CAP LS; one that cannot may stay silent
    # on STARTTLS before registration, so asking first turns a timeout into a clear not_offered.
    await stream.write(b"CAP LS 302\r\n")
    kind, words = await _irc_reply(stream)
    if kind == "CAP":
        offered: list[str] = []
        while True:  # "CAP * LS * :a b" continues, "CAP * LS :c d" ends
            more = len(words) > 2 and words[2] == "*"
            offered += [w.lstrip(":").split("=")[0] for w in words[3 if more else 2 :]]
            if not more:
                break
            kind, words = await _irc_reply(stream)
        if "tls" not in offered:
            raise StartTlsError("not_offered", "no tls in CAP LS")
    await stream.write(b"STARTTLS\r\n")
    while True:
        kind, words = await _irc_reply(stream)
        if kind == _IRC_GO:
            return
        if kind == _IRC_NO:
            raise StartTlsError("rejected", " ".join(words)[:120])
        if kind == _IRC_UNKNOWN:
            raise StartTlsError("not_offered", " ".join(words)[:120])


# -- binary protocols: LDAP, PostgreSQL, MySQL --------------------------------------------------

LDAP_STARTTLS_OID = b"1.3.6.1.4.1.1466.20037"
# LDAPMessage { messageID 1, extendedReq [APPLICATION 23] { requestName [0] OID } }
LDAP_STARTTLS_REQUEST = (
    b"\x30" + bytes([3 + 2 + 2 + len(LDAP_STARTTLS_OID)]) + b"\x02\x01\x01"
    + b"\x77" + bytes([2 + len(LDAP_STARTTLS_OID)]) + b"\x80" + bytes([len(LDAP_STARTTLS_OID)]) + LDAP_STARTTLS_OID
)  # fmt: skip
_LDAP_NOT_SUPPORTED = {2, 52, 53}  # protocolError (unknown operation), unavailable, unwillingToPerform


async def _ber_element(stream: Stream) -> tuple[int, bytes]:
    """Read one BER element: (tag, contents), with long-form lengths up to MAX_TOTAL."""
    tag, first = await stream.read_exactly(2)
    if first < 0x80:
        length = first
    elif first == 0x80 or first - 0x80 > 4:
        raise StartTlsError("protocol_error", "unsupported BER length")
    else:
        length = int.from_bytes(await stream.read_exactly(first - 0x80), "big")
    if length > MAX_TOTAL:
        raise StartTlsError("protocol_error", f"BER element of {length} bytes")
    return tag, await stream.read_exactly(length)


def ldap_result_code(message: bytes) -> int:
    """resultCode of an LDAPMessage's contents holding an ExtendedResponse (pure)."""
    position = 0
    tags: list[int] = []
    while position < len(message) and len(tags) < 3:
        tag, length, header = message[position], message[position + 1], 2
        if length & 0x80:
            size = length & 0x7F
            length, header = int.from_bytes(message[position + 2 : position + 2 + size], "big"), 2 + size
        tags.append(tag)
        if tag == 0x78:  # ExtendedResponse: descend; its first element is the resultCode
            position += header
            continue
        if tag == 0x0A and tags[-2:-1] == [0x78]:
            return int.from_bytes(message[position + header : position + header + length], "big")
        position += header + length
    raise StartTlsError("protocol_error", "no ExtendedResponse resultCode in the LDAP reply")


async def _ldap(stream: Stream, _domain: str) -> None:
    await stream.write(LDAP_STARTTLS_REQUEST)
    tag, contents = await _ber_element(stream)
    if tag != 0x30:
        raise StartTlsError("protocol_error", f"LDAP reply starts with tag {tag:#x}")
    code = ldap_result_code(contents)
    if code in _LDAP_NOT_SUPPORTED:
        raise StartTlsError("not_offered", f"LDAP resultCode {code}")
    if code != 0:
        raise StartTlsError("rejected", f"LDAP resultCode {code}")


POSTGRES_SSL_REQUEST = struct.pack("!II", 8, 80877103)


async def _postgres(stream: Stream, _domain: str) -> None:
    await stream.write(POSTGRES_SSL_REQUEST)
    answer = await stream.read_exactly(1)
    if answer == b"N":
        raise StartTlsError("not_offered", "server answered N to SSLRequest")
    if answer != b"S":
        raise StartTlsError("rejected" if answer == b"E" else "protocol_error", f"SSLRequest answer {answer!r}")


MYSQL_CLIENT_SSL = 0x00000800
MYSQL_CLIENT_PROTOCOL_41 = 0x00000200
MYSQL_CLIENT_SECURE_CONNECTION = 0x00008000


def mysql_capabilities(payload: bytes) -> int:
    """Capability flags of a MySQL/MariaDB initial handshake packet (protocol 10) (pure)."""
    if not payload or payload[0] == 0xFF:
        message = payload[3:].decode("utf-8", "replace") if payload else ""
        raise StartTlsError("rejected", f"server refused the connection: {message[:120]}")
    if payload[0] != 10:
        raise StartTlsError("protocol_error", f"handshake protocol {payload[0]}")
    version_end = payload.find(b"\x00", 1)
    if version_end < 0:
        raise StartTlsError("protocol_error", "no server version terminator")
    low = version_end + 1 + 4 + 8 + 1  # thread id, auth data part 1, filler
    if len(payload) < low + 2:
        raise StartTlsError("protocol_error", "handshake packet too short")
    capabilities = int.from_bytes(payload[low : low + 2], "little")
    high = low + 2 + 1 + 2  # charset, status flags
    if len(payload) >= high + 2:
        capabilities |= int.from_bytes(payload[high : high + 2], "little") << 16
    return capabilities


def mysql_ssl_request(sequence: int) -> bytes:
    flags = MYSQL_CLIENT_SSL | MYSQL_CLIENT_PROTOCOL_41 | MYSQL_CLIENT_SECURE_CONNECTION
    payload = struct.pack("<IIB23x", flags, 16 * 1024 * 1024, 33)  # utf8 collation
    return len(payload).to_bytes(3, "little") + bytes([sequence]) + payload


async def _mysql(stream: Stream, _domain: str) -> None:
    header = await stream.read_exactly(4)
    payload = await stream.read_exactly(int.from_bytes(header[:3], "little"))
    if not mysql_capabilities(payload) & MYSQL_CLIENT_SSL:
        raise StartTlsError("not_offered", "server capabilities lack CLIENT_SSL")
    await stream.write(mysql_ssl_request(header[3] + 1))


# -- XMPP ----------------------------------------------------------------------------------------

_STREAMS = "http://etherx.jabber.org/streams"
_TLS_NS = "urn:ietf:params:xml:ns:xmpp-tls"


async def _xml_until(stream: Stream, parser: XMLPullParser[Element], wanted: set[str], seen: set[str]) -> str:
    """Feed the parser until an element in `wanted` ends or a TLS verdict starts; return its tag.

    Every element start is added to `seen`."""
    try:
        while True:
            if (tag := _xml_events(parser, wanted, seen)) is not None:
                return tag
            parser.feed(await stream.read_some())
    except ParseError as exc:  # raised by feed or, for a queued error, by read_events
        raise StartTlsError("protocol_error", f"XML: {exc}") from None


_VERDICTS = {f"{{{_TLS_NS}}}proceed", f"{{{_TLS_NS}}}failure"}


def _xml_events(parser: XMLPullParser[Element], wanted: set[str], seen: set[str]) -> str | None:
    for event, element in parser.read_events():  # type: ignore[misc]
        tag = str(getattr(element, "tag", ""))
        if event == "start":
            seen.add(tag)
            if tag in _VERDICTS:
                return tag
        elif tag in wanted:
            return tag
    return None


async def _xmpp(stream: Stream, domain: str, namespace: str = "jabber:client") -> None:
    await stream.write(
        f"<?xml version='1.0'?><stream:stream to='{_xml_attr(domain)}' xmlns='{namespace}' "
        f"xmlns:stream='{_STREAMS}' version='1.0'>".encode()
    )
    parser: XMLPullParser[Element] = XMLPullParser(events=("start", "end"))
    seen: set[str] = set()
    features, error = f"{{{_STREAMS}}}features", f"{{{_STREAMS}}}error"
    if await _xml_until(stream, parser, {features, error}, seen) != features:
        raise StartTlsError("rejected", "stream error instead of stream features")
    if f"{{{_TLS_NS}}}starttls" not in seen:
        raise StartTlsError("not_offered", "no <starttls/> in the stream features")
    await stream.write(f"<starttls xmlns='{_TLS_NS}'/>".encode())
    verdict = await _xml_until(stream, parser, {error}, seen)
    if verdict != f"{{{_TLS_NS}}}proceed":
        raise StartTlsError("rejected", verdict.rsplit("}", 1)[-1])


async def _xmpp_server(stream: Stream, domain: str) -> None:
    await _xmpp(stream, domain, namespace="jabber:server")


def _xml_attr(value: str) -> str:
    return value.replace("&", "&amp;").replace("'", "&apos;").replace("<", "&lt;")


Dialogue = Callable[[Stream, str], Awaitable[None]]

PROTOCOLS: dict[str, Dialogue] = {
    "smtp": _smtp,
    "lmtp": _lmtp,
    "imap": _imap,
    "pop3": _pop3,
    "ftp": _ftp,
    "ldap": _ldap,
    "postgres": _postgres,
    "mysql": _mysql,
    "xmpp": _xmpp,
    "xmpp-server": _xmpp_server,
    "nntp": _nntp,
    "sieve": _sieve,
    "irc": _irc,
}


async def negotiate(sock: socket.socket, protocol: str, domain: str) -> bytes:
    """Run `protocol`'s STARTTLS dialogue on `sock`; return bytes already received past it."""
    stream = SocketStream(sock)
    await PROTOCOLS[protocol](stream, domain)
    return stream.leftover()
