"""Java's own keystore formats, JKS and JCEKS: certificates out, and a private key when asked. No I/O.

Strategy: both formats are a length-prefixed list of entries followed by a SHA-1 over the
password, a fixed phrase and everything before it; certificates are stored in the clear, so
listing them needs the password only to prove the file is intact. A JCEKS secret-key entry is a
Java-serialized object with no length in front of it, so `_skip_serialized` walks just enough of
the serialization grammar to find where it ends. Private keys (for a client certificate) are
decrypted with JKS's SHA-1 key stream or JCEKS's PBEWithMD5AndTripleDES, both specified by the
JDK's sun.security.provider.KeyProtector and com.sun.crypto.provider.KeyProtector.

Why not pyjks: its last release is from 2020, and it pulls in pycryptodomex (a second crypto
library beside cryptography), javaobj-py3, pyasn1, and twofish, a C extension from 2013 without
wheels, so every node would need a compiler. The part of the formats this tool needs is below.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

JKS_MAGIC = 0xFEEDFEED
JCEKS_MAGIC = 0xCECECECE
_PHRASE = b"Mighty Aphrodite"  # fixed by the format
_KEY_ENTRY, _CERT_ENTRY, _SECRET_ENTRY = 1, 2, 3
_OID_JKS_KEY = "1.3.6.1.4.1.42.2.17.1.1"
_OID_JCEKS_KEY = "1.3.6.1.4.1.42.2.19.1"


class JksError(Exception):
    """The bytes are not a keystore we can read. `reason` is a file read reason (see files.py)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class JksEntry:
    alias: str
    kind: str  # "key", "trusted" or "secret"
    chain: tuple[bytes, ...]  # DER certificates, leaf first; one for "trusted", none for "secret"
    protected_key: bytes = b""  # EncryptedPrivateKeyInfo DER, for "key"


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise JksError("corrupt", f"the file ends inside an entry (at byte {self.pos}, needs {n} more)")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def utf(self) -> str:
        # Java's modified UTF-8; aliases are plain text, so a replacement character is good enough.
        return self.take(self.u16()).decode("utf-8", errors="replace")

    def blob(self) -> bytes:
        return self.take(self.u32())


def is_keystore(data: bytes) -> bool:
    return len(data) >= 4 and int.from_bytes(data[:4], "big") in (JKS_MAGIC, JCEKS_MAGIC)


def parse(data: bytes, password: str | None) -> tuple[str, tuple[JksEntry, ...]]:
    """("JKS" or "JCEKS", entries in file order). Without a password the integrity check is
    skipped, as keytool does; with a wrong one, JksError("bad_password")."""
    reader = _Reader(data)
    magic, version = reader.u32(), reader.u32()
    if magic not in (JKS_MAGIC, JCEKS_MAGIC):
        raise JksError("unsupported_format", "not a JKS or JCEKS keystore")
    if version not in (1, 2):
        raise JksError("unsupported_format", f"keystore version {version} is unknown")
    store_type = "JKS" if magic == JKS_MAGIC else "JCEKS"
    count = reader.u32()
    if count > len(data) // 16:
        raise JksError("corrupt", f"the header claims {count} entries, more than the file can hold")
    entries = tuple(_entry(reader, version, store_type) for _ in range(count))
    body_end = reader.pos
    digest = reader.take(20)
    if reader.pos != len(data):
        raise JksError("corrupt", f"{len(data) - reader.pos} bytes after the integrity digest")
    if password is not None:
        expected = hashlib.sha1(_utf16(password) + _PHRASE + data[:body_end], usedforsecurity=False).digest()
        if expected != digest:
            raise JksError("bad_password", "the keystore password is wrong, or the file was altered")
    return store_type, entries


def _utf16(password: str) -> bytes:
    return password.encode("utf-16-be")


def _entry(reader: _Reader, version: int, store_type: str) -> JksEntry:
    tag = reader.u32()
    alias = reader.utf()
    reader.take(8)  # creation time, milliseconds
    if tag == _KEY_ENTRY:
        protected = reader.blob()
        chain = tuple(_cert(reader, version) for _ in range(reader.u32()))
        return JksEntry(alias, "key", chain, protected)
    if tag == _CERT_ENTRY:
        return JksEntry(alias, "trusted", (_cert(reader, version),))
    if tag == _SECRET_ENTRY and store_type == "JCEKS":
        _skip_serialized(reader)
        return JksEntry(alias, "secret", ())
    raise JksError("corrupt", f"unknown entry tag {tag} for alias {alias!r}")


def _cert(reader: _Reader, version: int) -> bytes:
    if version == 2:
        cert_type = reader.utf()
        if cert_type != "X.509":
            raise JksError("unsupported_format", f"certificate type {cert_type!r} is not X.509")
    return reader.blob()


# -- Java serialization, only as far as needed to step over a sealed secret key -----------------

_PRIMITIVE_SIZES = {"B": 1, "C": 2, "D": 8, "F": 4, "I": 4, "J": 8, "S": 2, "Z": 1}
_SC_WRITE_METHOD, _SC_BLOCK_DATA, _SC_EXTERNALIZABLE = 0x01, 0x08, 0x04
_MAX_DEPTH = 32


@dataclass
class _ClassDesc:
    name: str
    flags: int
    fields: list[tuple[str, str]]  # (type code, class name or "")
    parent: _ClassDesc | None = None


def _skip_serialized(reader: _Reader) -> None:
    if reader.take(4) != b"\xac\xed\x00\x05":
        raise JksError("corrupt", "a secret-key entry is not a Java serialization stream")
    _Serialized(reader).content(0)


class _Serialized:
    """Walks one Java object serialization stream (Java Object Serialization Specification, ch. 6)."""

    def __init__(self, reader: _Reader) -> None:
        self.r = reader
        self.handles: list[object] = []

    def content(self, depth: int) -> object:
        if depth > _MAX_DEPTH:
            raise JksError("corrupt", "a secret-key entry nests too deeply")
        code = self.r.u8()
        if code == 0x70:  # TC_NULL
            return None
        if code == 0x71:  # TC_REFERENCE
            index = self.r.u32() - 0x7E0000
            if not 0 <= index < len(self.handles):
                raise JksError("corrupt", "a secret-key entry refers to an unknown object")
            return self.handles[index]
        if code == 0x72:  # TC_CLASSDESC
            return self.class_desc(depth)
        if code == 0x73:  # TC_OBJECT
            return self.new_object(depth)
        if code in (0x74, 0x7C):  # TC_STRING, TC_LONGSTRING
            text = self.r.take(self.r.u16() if code == 0x74 else int.from_bytes(self.r.take(8), "big"))
            self.handles.append(text.decode("utf-8", errors="replace"))
            return self.handles[-1]
        if code == 0x75:  # TC_ARRAY
            return self.array(depth)
        if code == 0x77:  # TC_BLOCKDATA
            return self.r.take(self.r.u8())
        if code == 0x7A:  # TC_BLOCKDATALONG
            return self.r.take(self.r.u32())
        if code == 0x7E:  # TC_ENUM
            self.desc(depth)
            self.handles.append("enum")
            self.content(depth + 1)
            return "enum"
        raise JksError("unsupported_format", f"a secret-key entry uses serialization code {code:#x}")

    def desc(self, depth: int) -> _ClassDesc | None:
        value = self.content(depth + 1)
        if value is not None and not isinstance(value, _ClassDesc):
            raise JksError("corrupt", "a secret-key entry has a class description of the wrong kind")
        return value

    def class_desc(self, depth: int) -> _ClassDesc:
        name = self.r.utf()
        self.r.take(8)  # serialVersionUID
        desc = _ClassDesc(name, 0, [])
        self.handles.append(desc)
        desc.flags = self.r.u8()
        for _ in range(self.r.u16()):
            code, _field = chr(self.r.u8()), self.r.utf()
            type_name = str(self.content(depth + 1)) if code in "[L" else ""
            desc.fields.append((code, type_name))
        self.annotations(depth)
        desc.parent = self.desc(depth)
        return desc

    def annotations(self, depth: int) -> None:
        while self.r.data[self.r.pos : self.r.pos + 1] != b"\x78":  # until TC_ENDBLOCKDATA
            self.content(depth + 1)
        self.r.take(1)

    def new_object(self, depth: int) -> object:
        desc = self.desc(depth)
        self.handles.append("object")
        hierarchy: list[_ClassDesc] = []
        while desc is not None:
            if desc in hierarchy or len(hierarchy) >= _MAX_DEPTH:  # a class its own ancestor: crafted
                raise JksError("corrupt", "a secret-key entry has a cyclic class hierarchy")
            hierarchy.insert(0, desc)
            desc = desc.parent
        for cls in hierarchy:
            if cls.flags & _SC_EXTERNALIZABLE:
                if not cls.flags & _SC_BLOCK_DATA:
                    raise JksError("unsupported_format", f"{cls.name} is externalized without block data")
                self.annotations(depth)
                continue
            for code, _type_name in cls.fields:
                self.value(code, depth)
            if cls.flags & _SC_WRITE_METHOD:
                self.annotations(depth)
        return "object"

    def value(self, code: str, depth: int) -> None:
        if code in _PRIMITIVE_SIZES:
            self.r.take(_PRIMITIVE_SIZES[code])
        else:
            self.content(depth + 1)

    def array(self, depth: int) -> object:
        desc = self.desc(depth)
        self.handles.append("array")
        length = self.r.u32()
        element = desc.name[1:2] if desc is not None else ""
        if element in _PRIMITIVE_SIZES:
            self.r.take(length * _PRIMITIVE_SIZES[element])
        else:
            for _ in range(length):
                self.content(depth + 1)
        return "array"


# -- private keys ---------------------------------------------------------------------------------


def decrypt_key(protected: bytes, password: str) -> bytes:
    """The PKCS#8 PrivateKeyInfo DER inside a key entry; JksError("bad_password") if it is wrong."""
    oid, params, encrypted = _encrypted_key_info(protected)
    if oid == _OID_JKS_KEY:
        return _jks_key(encrypted, _utf16(password))
    if oid == _OID_JCEKS_KEY:
        return _jceks_key(encrypted, params, password)
    raise JksError("unsupported_format", f"private key protected with {oid}, which is not supported")


def _jks_key(encrypted: bytes, password: bytes) -> bytes:
    if len(encrypted) < 41:
        raise JksError("corrupt", "a protected key is too short")
    salt, body, check = encrypted[:20], encrypted[20:-20], encrypted[-20:]
    stream = bytearray()
    digest = salt
    while len(stream) < len(body):
        digest = hashlib.sha1(password + digest, usedforsecurity=False).digest()
        stream += digest
    plain = bytes(a ^ b for a, b in zip(body, stream, strict=False))
    if hashlib.sha1(password + plain, usedforsecurity=False).digest() != check:
        raise JksError("bad_password", "the key password is wrong")
    return plain


def _jceks_key(encrypted: bytes, params: bytes, password: str) -> bytes:
    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    salt_node, rest = _der(params, 0x30)
    salt, rest = _der(salt_node, 0x04)
    iterations = int.from_bytes(_der(rest, 0x02)[0], "big")
    # The JDK refuses more than 5,000,000 iterations (KeyProtector's cap); so do we: each costs an MD5.
    if len(salt) != 8 or not 0 < iterations <= 5_000_000 or len(encrypted) % 8:
        raise JksError("corrupt", "a protected key has bad PBE parameters")
    secret = bytes(ord(c) & 0xFF for c in password)  # the JDK keeps the low byte of each char
    halves = [bytearray(salt[:4]), bytearray(salt[4:])]
    if halves[0] == halves[1]:
        # As the JDK does it, including its index slip (3 - 1 where 3 - i was meant).
        first = halves[0]
        for i in range(2):
            first[i], first[2] = first[3 - i], first[i]
    derived = b""
    for half in halves:
        block = bytes(half)
        for _ in range(iterations):
            block = hashlib.md5(block + secret, usedforsecurity=False).digest()
        derived += block
    decryptor = Cipher(TripleDES(derived[:24]), modes.CBC(derived[24:32])).decryptor()
    padded = decryptor.update(encrypted) + decryptor.finalize()
    try:
        unpadder = padding.PKCS7(64).unpadder()
        plain = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise JksError("bad_password", "the key password is wrong") from None
    if not plain.startswith(b"\x30"):
        raise JksError("bad_password", "the key password is wrong")
    return plain


def _encrypted_key_info(data: bytes) -> tuple[str, bytes, bytes]:
    """(algorithm OID, its parameters as DER, the encrypted bytes) of an EncryptedPrivateKeyInfo."""
    body, _ = _der(data, 0x30)
    algorithm, rest = _der(body, 0x30)
    encrypted, _ = _der(rest, 0x04)
    oid_bytes, params = _der(algorithm, 0x06)
    return _oid(oid_bytes), params, encrypted


def _der(data: bytes, tag: int) -> tuple[bytes, bytes]:
    """(contents, what follows) of one DER element that must have `tag`."""
    if len(data) < 2 or data[0] != tag:
        raise JksError("corrupt", f"expected DER tag {tag:#x} in a protected key")
    length, start = data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4 or len(data) < 2 + count:
            raise JksError("corrupt", "bad DER length in a protected key")
        length, start = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
    if start + length > len(data):
        raise JksError("corrupt", "a protected key ends early")
    return data[start : start + length], data[start + length :]


def _oid(data: bytes) -> str:
    parts, value = [], 0
    for byte in data:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    if not parts:
        return ""
    first = min(parts[0] // 40, 2)
    return ".".join(str(p) for p in [first, parts[0] - 40 * first, *parts[1:]])
