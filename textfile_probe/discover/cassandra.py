"""Apache Cassandra: TLS endpoints and keystores from cassandra.yaml (3.11, 4.0, 4.1, 5.0).

What the file means, per version (read from Cassandra's Config.java, the shipped yaml and its docs;
tests/discovery/README.md names the sources):
- Native (CQL) TLS when `client_encryption_options.enabled` is true, or (4.0+ only) `optional`
  is. It is on `native_transport_port_ssl` when that is set and differs from
  `native_transport_port` (the dual-port mode of 3.x and 4.x), else on `native_transport_port`. It binds `rpc_address`
  (DSE calls it `native_transport_address`; we take either).
- Internode TLS when `server_encryption_options.internode_encryption` is not none (or, 4.0+,
  `optional` is true): on `ssl_storage_port` in 3.x; on `storage_port` in 4.0+, plus
  `ssl_storage_port` when the legacy port is enabled. It binds `listen_address`. The version is
  told by keys only 3.x has (thrift's `start_rpc`, `rpc_port`, ...).
- Stores are `keystore`/`truststore` with `*_password` (6.0 adds `*_password_file`), typed by
  `store_type` (JKS by default) or PEM through `PEMBasedSslContextFactory` (4.1+). Relative paths
  are relative to Cassandra's working directory; we take the directory above conf/.

Decisions: 4.0+ turns `optional` on by itself when the keystore exists and `enabled` is false;
we do not follow that guess and probe only what the file asks for. A node that requires client
certificates is probed with its own keystore (internode: `outbound_keystore` when set). The
hostname is checked only where Cassandra checks it (`require_endpoint_verification`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..config import StoreSpec
from ..errors import ConfigError
from .common import Discovered, probe_host, unique

_THREE_X_KEYS = ("start_rpc", "rpc_port", "rpc_server_type", "thrift_framed_transport_size_in_mb")
_FORMATS = {"JKS": "jks", "JCEKS": "jceks", "PKCS12": "pkcs12", "PEM": "pem"}
_INTERNODE = ("none", "all", "dc", "rack")


class _Yaml:
    """cassandra.yaml as values, remembering each key's line for error messages."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.errors: list[str] = []
        try:
            text = Path(path).read_text(encoding="utf-8")
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"{path}: cannot read cassandra.yaml: {exc}"]) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError([f"{path}{where}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
        if not isinstance(root, yaml.MappingNode):
            raise ConfigError([f"{path}: expected cassandra.yaml to be a mapping"])
        self.lines: dict[str, int] = {}
        self.values: dict[str, Any] = {
            str(k): v for k, v in yaml.SafeLoader("").construct_mapping(root, deep=True).items()
        }
        self._index(root, "")

    def _index(self, node: yaml.MappingNode, prefix: str) -> None:
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}"
            self.lines[key] = key_node.start_mark.line + 1
            if isinstance(value_node, yaml.MappingNode):
                self._index(value_node, key + ".")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        section, _, name = key.rpartition(".")
        scope = self.values.get(section) if section else self.values
        value = scope.get(name) if isinstance(scope, dict) else None
        if value is None:
            return default
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error(key, f"expected {getattr(kind, '__name__', 'a string')}, got {value!r}")
            return default
        return value

    def error(self, key: str, message: str) -> None:
        text = f"{self.path}:{self.lines.get(key, 1)}: {key}: {message}"
        if text not in self.errors:  # a key read twice is reported once
            self.errors.append(text)

    def port(self, key: str, default: int | None) -> int | None:
        value = self.get(key, int, default)
        if value is not None and not 1 <= value <= 65535:
            self.error(key, f"expected a port from 1 to 65535, got {value}")
            return default
        return value  # type: ignore[no-any-return]


def discover(path: str, address: str | None = None) -> Discovered:
    doc = _Yaml(path)
    home = Path(path).resolve().parent.parent
    three_x = any(key in doc.values for key in _THREE_X_KEYS)
    targets: list[dict[str, Any]] = []
    files: list[StoreSpec | None] = []
    for key, default in (("native_transport_port", 9042), ("storage_port", 7000), ("ssl_storage_port", 7001)):
        doc.port(key, default)  # every bad port is reported, used or not
    native = _native(doc, home, address, three_x)
    if native is not None:
        targets.append(native[0])
        files += native[1]
    for target, stores in _internode(doc, home, address, three_x):
        targets.append(target)
        files += stores
    if doc.errors:
        raise ConfigError(doc.errors)
    return Discovered(tuple(targets), unique(files))


def _store(doc: _Yaml, home: Path, section: str, name: str) -> StoreSpec | None:
    """The keystore or truststore `name` of an options section, if the file names one."""
    location = doc.get(f"{section}.{name}", str)
    if not location:
        return None
    factory = str((doc.values.get(section) or {}).get("ssl_context_factory", {}).get("class_name", ""))
    store_type = doc.get(f"{section}.store_type", str, "JKS").upper()
    fmt = "pem" if factory.endswith("PEMBasedSslContextFactory") else _FORMATS.get(store_type)
    if fmt is None:
        doc.error(f"{section}.store_type", f"expected one of {', '.join(_FORMATS)}, got {store_type!r}")
        return None
    password_file = doc.get(f"{section}.{name}_password_file", str)
    password = None if password_file else doc.get(f"{section}.{name}_password", (str, int))
    return StoreSpec(
        path=str(home / location),
        format=fmt,
        password=None if password is None else str(password),
        password_file=str(home / password_file) if password_file else None,
    )


def _native(
    doc: _Yaml, home: Path, address: str | None, three_x: bool
) -> tuple[dict[str, Any], list[StoreSpec | None]] | None:
    section = "client_encryption_options"
    enabled = doc.get(f"{section}.enabled", bool, False)
    optional = doc.get(f"{section}.optional", bool, False)
    # 3.x serves plain text whenever `enabled` is false; 4.0+ also serves TLS when only `optional` is set.
    if not (enabled or (optional and not three_x)):
        return None
    port = doc.port("native_transport_port", 9042)
    ssl_port = doc.port("native_transport_port_ssl", None)
    if ssl_port is not None and ssl_port != port:
        port = ssl_port
    bind = doc.get("native_transport_address", str) or doc.get("rpc_address", str, "localhost")
    if address is None and "rpc_address" not in doc.values and "rpc_interface" in doc.values:
        doc.error("rpc_interface", "an interface name cannot be probed; set `address` under discover.cassandra")
    host = address or probe_host(bind)
    server_name = doc.get("broadcast_rpc_address", str) if host != bind else None
    keystore, truststore = _store(doc, home, section, "keystore"), _store(doc, home, section, "truststore")
    if truststore is None:  # the node's own trust anchors, if the client side names none
        truststore = _store(doc, home, "server_encryption_options", "truststore")
    client_auth = doc.get(f"{section}.require_client_auth", (bool, str), False) in (True, "true", "required")
    check_name = doc.get(f"{section}.require_endpoint_verification", bool, False)
    target = _target("cassandra/native", host, port, server_name, check_name, keystore, truststore, client_auth)
    return target, [keystore, truststore]


def _internode(
    doc: _Yaml, home: Path, address: str | None, three_x: bool
) -> list[tuple[dict[str, Any], list[StoreSpec | None]]]:
    section = "server_encryption_options"
    mode = doc.get(f"{section}.internode_encryption", str, "none")
    if mode not in _INTERNODE:
        doc.error(f"{section}.internode_encryption", f"expected one of {', '.join(_INTERNODE)}, got {mode!r}")
        return []
    optional = not three_x and doc.get(f"{section}.optional", bool, False)
    if mode == "none" and not optional:
        return []
    ssl_port = doc.port("ssl_storage_port", 7001)
    legacy = doc.get(f"{section}.legacy_ssl_storage_port_enabled", bool) or doc.get(
        f"{section}.enable_legacy_ssl_storage_port", bool, False
    )
    ports = [("cassandra/internode", ssl_port if three_x else doc.port("storage_port", 7000))]
    if not three_x and legacy and mode != "none":
        ports.append(("cassandra/internode-legacy", ssl_port))
    if address is None and "listen_address" not in doc.values and "listen_interface" in doc.values:
        doc.error("listen_interface", "an interface name cannot be probed; set `address` under discover.cassandra")
    bind = doc.get("listen_address", str, "localhost")
    host = address or probe_host(bind)
    server_name = doc.get("broadcast_address", str) if host != bind else None
    keystore, truststore = _store(doc, home, section, "keystore"), _store(doc, home, section, "truststore")
    outbound = _store(doc, home, section, "outbound_keystore") or keystore
    client_auth = doc.get(f"{section}.require_client_auth", (bool, str), False) in (True, "true", "required")
    stores = [keystore, truststore, outbound if client_auth else None]
    check_name = doc.get(f"{section}.require_endpoint_verification", bool, False)
    return [
        (_target(name, host, port, server_name, check_name, keystore, truststore, client_auth, outbound), stores)
        for name, port in ports
        if port is not None
    ]


def _target(
    name: str,
    host: str,
    port: int | None,
    server_name: str | None,
    check_name: bool,
    keystore: StoreSpec | None,
    truststore: StoreSpec | None,
    client_auth: bool,
    client: StoreSpec | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "host": host,
        "port": port,
        "server_name": server_name or host,
        "starttls": "none",
        "verify_hostname": check_name,
        "truststore": truststore,
        "keystore": keystore,
        "client_keystore": (client or keystore) if client_auth else None,
    }
