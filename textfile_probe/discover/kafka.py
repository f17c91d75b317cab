"""Apache Kafka: TLS listeners and keystores from a broker's server.properties.

What the file means (Kafka's broker configuration docs): `listeners` is a comma list of
NAME://host:port; `listener.security.protocol.map` maps each NAME to a protocol, and the
listeners mapped to SSL or SASL_SSL speak TLS from the first byte (SASL comes after it). Each
`ssl.*` key can be overridden per listener as `listener.name.<name in lower case>.ssl.*`, key by
key. An empty host binds this host's name, 0.0.0.0 every address. The host clients verify is the
one in `advertised.listeners`, so that is the name checked, when the listener is advertised.
The file is java.util.Properties syntax, parsed by `parse_properties`. A relative store path is
taken relative to the file's directory (Kafka itself uses the broker's working directory, which
this file does not name; brokers are normally given absolute paths).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import StoreSpec
from ..errors import ConfigError
from .common import Discovered, probe_host, unique

_DEFAULT_PROTOCOLS = {
    "PLAINTEXT": "PLAINTEXT",
    "SSL": "SSL",
    "SASL_PLAINTEXT": "SASL_PLAINTEXT",
    "SASL_SSL": "SASL_SSL",
}
_FORMATS = {"JKS": "jks", "PKCS12": "pkcs12", "PEM": "pem", "JCEKS": "jceks"}
_LISTENER = re.compile(r"^([A-Za-z0-9_]+)://(\[[^\]]*\]|[^:\[\]]*):(\d{1,5})$")
_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}


_BLANK = " \t\f"  # what java.util.Properties counts as whitespace; nothing else is


def parse_properties(text: str) -> dict[str, tuple[str, int]]:
    """java.util.Properties.load over latin-1 text: key -> (value, line of its first natural line).

    As Java does it: lines end only at \\n, \\r or \\r\\n; only space, tab and form feed are blanks;
    a line whose first non-blank is # or ! is a comment; an odd number of backslashes at the end
    continues the line (the next line's leading blanks dropped; at the end of the file the
    backslash is dropped); the key ends at the first unescaped =, : or blank. A malformed \\uXXXX
    escape raises ValueError, as Java raises IllegalArgumentException.
    """
    out: dict[str, tuple[str, int]] = {}
    lines = re.split(r"\r\n|\r|\n", text)
    index = 0
    while index < len(lines):
        start, logical = index + 1, lines[index].lstrip(_BLANK)
        index += 1
        if not logical or logical[0] in "#!":
            continue
        while (len(logical) - len(logical.rstrip("\\"))) % 2:
            logical = logical[:-1]
            if index >= len(lines):
                break
            logical += lines[index].lstrip(_BLANK)
            index += 1
        key, value = _split_key(logical)
        out[_unescape(key)] = (_unescape(value), start)
    return out


def _split_key(line: str) -> tuple[str, str]:
    position = 0
    while position < len(line):
        char = line[position]
        if char == "\\":
            position += 2
            continue
        if char in "=:" or char in _BLANK:
            break
        position += 1
    key, rest = line[:position], line[position:].lstrip(_BLANK)
    if rest[:1] in ("=", ":") and rest:
        rest = rest[1:].lstrip(_BLANK)
    return key, rest


def _unescape(text: str) -> str:
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code.startswith("u"):
            if not re.fullmatch(r"u[0-9a-fA-F]{4}", code):
                raise ValueError("Malformed \\uxxxx encoding.")
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, code)

    if "\\" not in text:
        return text
    decoded = re.sub(r"\\(u.{0,4}|.)", one, text, flags=re.DOTALL)
    # Java strings are UTF-16: a pair of \\u escapes for a surrogate pair is one character.
    return decoded.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")


def discover(path: str, address: str | None = None) -> Discovered:
    try:
        props = parse_properties(Path(path).read_text(encoding="latin-1"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read server.properties: {exc}"]) from None
    except ValueError as exc:
        raise ConfigError([f"{path}: not a valid properties file: {exc}"]) from None
    errors: list[str] = []
    home = Path(path).resolve().parent

    def get(key: str, default: str | None = None) -> str | None:
        return props[key][0].strip() if key in props else default

    protocols = dict(_DEFAULT_PROTOCOLS)
    for pair in filter(None, (get("listener.security.protocol.map") or "").split(",")):
        name, _, protocol = pair.strip().partition(":")
        protocols[name.strip().upper()] = protocol.strip().upper()
    # Unset, advertised.listeners is listeners; an empty host is advertised as this host's name.
    advertised_text = get("advertised.listeners") or get("listeners") or ""
    advertised = {name: host or socket.gethostname() for name, host, _ in _listeners(advertised_text, path, props, [])}
    for key in ("ssl.keystore.type", "ssl.truststore.type"):
        if (get(key) or "JKS").upper() not in _FORMATS:
            errors.append(f"{path}:{props[key][1]}: {key}: expected one of {', '.join(_FORMATS)}, got {get(key)!r}")
    targets: list[dict[str, Any]] = []
    files: list[StoreSpec | None] = []
    for name, host, port in _listeners(get("listeners") or "", path, props, errors):
        if name not in protocols:
            line = props["listeners"][1]
            errors.append(f"{path}:{line}: listeners: {name} has no entry in listener.security.protocol.map")
        if protocols.get(name) not in ("SSL", "SASL_SSL"):
            continue
        prefix = f"listener.name.{name.lower()}."

        def setting(key: str, default: str | None = None, prefix: str = prefix) -> str | None:
            return get(prefix + key, get(key, default))

        keystore = _store(setting, "ssl.keystore", home, errors, path, props)
        truststore = _store(setting, "ssl.truststore", home, errors, path, props)
        server_name = advertised.get(name, "")
        if server_name in ("0.0.0.0", "::"):
            server_name = ""
        probe_at = address or probe_host(host)
        targets.append(
            {
                "name": f"kafka/{name.lower()}",
                "host": probe_at,
                "port": port,
                "server_name": server_name or probe_at,
                "starttls": "none",
                "verify_hostname": bool(server_name),
                "truststore": truststore,
                "keystore": keystore,
                "client_keystore": keystore if setting("ssl.client.auth", "none") == "required" else None,
            }
        )
        files += [keystore, truststore]
    if errors:
        raise ConfigError(list(dict.fromkeys(errors)))  # a generic key used by several listeners: once
    return Discovered(tuple(targets), unique(files))


def _listeners(
    value: str, path: str, props: dict[str, tuple[str, int]], errors: list[str]
) -> list[tuple[str, str, int]]:
    line = props.get("listeners", ("", 1))[1]
    found = []
    for item in filter(None, (part.strip() for part in value.split(","))):
        match = _LISTENER.match(item)
        if not match or not 1 <= int(match.group(3)) <= 65535:
            errors.append(f"{path}:{line}: listeners: expected NAME://host:port, got {item!r}")
            continue
        found.append((match.group(1).upper(), match.group(2).strip("[]"), int(match.group(3))))
    return found


def _store(
    setting: Callable[..., str | None],
    key: str,
    home: Path,
    errors: list[str],
    path: str,
    props: dict[str, tuple[str, int]],
) -> StoreSpec | None:
    location = setting(f"{key}.location")
    if not location:
        return None
    store_type = (setting(f"{key}.type", "JKS") or "JKS").upper()
    fmt = _FORMATS.get(store_type)
    if fmt is None:
        line = props.get(f"{key}.type", ("", 1))[1]
        errors.append(f"{path}:{line}: {key}.type: expected one of {', '.join(_FORMATS)}, got {store_type!r}")
        return None
    password = setting(f"{key}.password")
    return StoreSpec(path=str(home / location), format=fmt, password=password or None)
