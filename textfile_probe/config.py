"""Configuration: YAML in, frozen validated dataclasses out.

This module is the schema: the dataclasses, the defaults and the table of field parsers for each
section; yamlfields.py is the machinery that walks the YAML node tree with them, so that every
error names the file, the line and the YAML path of the bad field. All defaults live in
`GLOBAL_DEFAULTS` and `TARGET_DEFAULTS`; a `defaults:` block in the file overrides the latter, a
target overrides both. Errors are collected, not raised at the first one, so `check-config` shows
them all at once. Loading reads only the config file, the files a `discover:` entry names, and
checks that named files are readable: no network.
"""

from __future__ import annotations

import enum
import glob
import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .starttls import PORTS as STARTTLS_PORTS
from .starttls import PROTOCOLS
from .stores import FORMATS as STORE_FORMATS
from .yamlfields import (
    Errors,
    Parser,
    choice,
    duration,
    fields,
    kind,
    mapping,
    readable_file,
    scalar,
    typed,
)
from .yamlfields import parse_duration as parse_duration  # part of this module's interface (CLI, bench)

DEFAULT_OUTPUT = "/var/lib/prometheus/node-exporter/textfile_probe.prom"


class TlsVersion(enum.IntEnum):
    """TLS protocol versions, ordered; the value is the wire version."""

    TLS1_0 = 0x0301
    TLS1_1 = 0x0302
    TLS1_2 = 0x0303
    TLS1_3 = 0x0304

    @property
    def label(self) -> str:
        """The name blackbox_exporter uses in probe_tls_version_info, e.g. 'TLS 1.3'."""
        return "TLS 1." + str(self.value - 0x0301)


# Accepted spellings: ours ("TLS1.2") and blackbox_exporter's ("TLS12").
_VERSION_NAMES = {f"TLS1{sep}{minor}": TlsVersion(0x0301 + minor) for minor in range(4) for sep in (".", "")}


@dataclass(frozen=True, slots=True)
class StoreSpec:
    """A certificate file or keystore and how to open it. In `files:` the path may be a glob or a
    directory; everywhere else it names one file. The password comes from at most one source and
    is read when the file is (see files.py), so a rotated password file needs no reload."""

    path: str
    format: str = "auto"  # one of stores.FORMATS
    password_file: str | None = None
    password_env: str | None = None
    password: str | None = field(default=None, repr=False)
    alias: str | None = None  # for a client certificate: which key entry; else the first
    labels: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Target:
    """One TLS endpoint to probe, with every default already applied."""

    name: str
    host: str
    port: int
    server_name: str
    verify: bool = True
    verify_hostname: bool = True  # with verify: also check the certificate names server_name
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    timeout: float = 10.0
    interval: float = 60.0
    ip_protocol: str = "auto"
    labels: tuple[tuple[str, str], ...] = ()
    min_version: TlsVersion | None = None
    max_version: TlsVersion | None = None
    starttls: str = "none"  # a protocol of starttls.PROTOCOLS, or "none" for TLS from the first byte
    truststore: StoreSpec | None = None  # trust anchors from a keystore or bundle, instead of ca_file
    client_keystore: StoreSpec | None = None  # client certificate and key from a keystore
    keystore: StoreSpec | None = None  # the store this endpoint should be serving from (served vs on disk)

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class Config:
    """The whole validated configuration."""

    path: str = ""
    output: str = DEFAULT_OUTPUT
    interval: float = 60.0
    timeout: float = 10.0
    concurrency: int = 64
    log_level: str = "info"
    targets: tuple[Target, ...] = field(default_factory=tuple)
    files: tuple[StoreSpec, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = field(default_factory=tuple)  # located, like errors; logged by the caller


GLOBAL_DEFAULTS: dict[str, Any] = {
    "output": DEFAULT_OUTPUT,
    "interval": 60.0,
    "timeout": 10.0,
    "concurrency": 64,
    "log_level": "info",
}

TARGET_DEFAULTS: dict[str, Any] = {
    "verify": True,
    "verify_hostname": True,
    "ca_file": None,
    "client_cert": None,
    "client_key": None,
    "ip_protocol": "auto",
    "labels": {},
    "min_version": None,
    "max_version": None,
    "truststore": None,
    "client_keystore": None,
}

MAX_NAME_LENGTH = 256
STARTTLS_CHOICES = ("none", *sorted(PROTOCOLS))
LOG_LEVELS = ("debug", "info", "warning", "error")
IP_PROTOCOLS = ("auto", "ip4", "ip6")

# Label names our own families use; a static label may not shadow them.
RESERVED_LABELS = frozenset(
    {
        "target", "stage", "reason", "phase", "version", "cipher", "fingerprint_sha256",
        "subject", "issuer", "subjectalternative", "serialnumber", "position", "subject_cn",
        "issuer_cn", "serial", "result", "python", "openssl", "job", "instance", "path", "alias", "entry",
        "format",
    }
)  # fmt: skip
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _output(node: yaml.Node, where: str, errors: Errors, base: Path) -> str | None:
    value = typed(str, "a file path")(node, where, errors, base)
    if value is not None and not value.endswith(".prom"):
        errors.add(
            node,
            where,
            f"expected a file name ending in .prom (node_exporter reads only those), got {value!r}",
        )
        return None
    return None if value is None else str(base / value)


def _tls_version(node: yaml.Node, where: str, errors: Errors, _base: Path) -> TlsVersion | None:
    value = scalar(node)
    if value is None:
        return None
    version = _VERSION_NAMES.get(str(value).upper())
    if version is None:
        errors.add(node, where, f"expected one of TLS1.0, TLS1.1, TLS1.2, TLS1.3, got {kind(node)}")
    return version


def _labels(node: yaml.Node, where: str, errors: Errors, _base: Path) -> dict[str, str]:
    labels: dict[str, str] = {}
    for key, value_node in mapping(node, where, errors):
        value = scalar(value_node)
        if not _LABEL_NAME.match(key) or key.startswith("__"):
            errors.add(
                value_node,
                f"{where}.{key}",
                "expected a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)",
            )
        elif key in RESERVED_LABELS:
            errors.add(
                value_node,
                f"{where}.{key}",
                "this label name is used by textfile-probe's own series; choose another",
            )
        elif not isinstance(value, str | int | float | bool):
            errors.add(value_node, f"{where}.{key}", f"expected a string, got {kind(value_node)}")
        else:
            labels[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return labels


def _address(node: yaml.Node, where: str, errors: Errors, _base: Path) -> tuple[str, int] | None:
    value = scalar(node)
    text = str(value) if isinstance(value, str) else ""
    match = re.match(r"^(?:\[([0-9A-Fa-f:.%\w]+)\]|([^\[\]:\s]+)):(\d{1,5})$", text)
    port = int(match.group(3)) if match else 0
    if not match or not 1 <= port <= 65535:
        errors.add(
            node,
            where,
            f"expected host:port or [ipv6]:port with a port from 1 to 65535, got {kind(node)}",
        )
        return None
    host = match.group(1) or match.group(2)
    if match.group(1):
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            errors.add(node, where, f"expected an IPv6 address inside [], got {host!r}")
            return None
    return host, port


def _password(node: yaml.Node, where: str, errors: Errors, _base: Path) -> str | None:
    value = scalar(node)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        errors.add(node, where, f"expected a password string, got {kind(node)}")
        return None
    errors.warn(node, where, "a password written in the config file; prefer password_file or password_env")
    return str(value)


def _env_name(node: yaml.Node, where: str, errors: Errors, _base: Path) -> str | None:
    value = scalar(node)
    if not isinstance(value, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", value):
        errors.add(node, where, f"expected an environment variable name, got {kind(node)}")
        return None
    if value not in os.environ:
        errors.warn(node, where, f"the environment variable {value} is not set here")
    return value


_STORE_PARSERS: dict[str, Parser] = {
    "path": typed(str, "a file path"),
    "format": choice(STORE_FORMATS),
    "password_file": readable_file,
    "password_env": _env_name,
    "password": _password,
    "alias": typed(str, "an alias"),
    "labels": _labels,
}
_PASSWORD_SOURCES = ("password_file", "password_env", "password")


def _store(pattern_ok: bool) -> Parser:
    """A store: a bare path, or a mapping of _STORE_PARSERS keys. Files need not exist yet: a
    missing one is reported by the file read status, not refused, so a node being set up runs."""

    def parse(node: yaml.Node, where: str, errors: Errors, base: Path) -> StoreSpec | None:
        if isinstance(node, yaml.ScalarNode):
            nodes: dict[str, yaml.Node] = {}
            values = {"path": typed(str, "a file path or a mapping with 'path'")(node, where, errors, base)}
        else:
            values, nodes = fields(node, where, _STORE_PARSERS, errors, base)
            if isinstance(node, yaml.MappingNode) and "path" not in values:
                errors.add(node, where, "missing required key 'path'")
        if values.get("path") is None:
            return None
        sources = [key for key in _PASSWORD_SOURCES if key in values]
        if len(sources) > 1:
            message = f"give one password source, not {' and '.join(sources)}"
            errors.add(nodes[sources[1]], f"{where}.{sources[1]}", message)
        if not pattern_ok and glob.has_magic(values["path"]):
            errors.add(nodes.get("path", node), where, "expected one file here, not a pattern")
        labels = values.pop("labels", {})
        return StoreSpec(**{**values, "path": str(base / values["path"]), "labels": tuple(sorted(labels.items()))})

    return parse


_GLOBAL_PARSERS: dict[str, Parser] = {
    "output": _output,
    "interval": duration,
    "timeout": duration,
    "concurrency": typed(int, "a whole number"),
    "log_level": choice(LOG_LEVELS),
}

_DEFAULTS_PARSERS: dict[str, Parser] = {
    "verify": typed(bool, "true or false"),
    "verify_hostname": typed(bool, "true or false"),
    "ca_file": readable_file,
    "client_cert": readable_file,
    "client_key": readable_file,
    "ip_protocol": choice(IP_PROTOCOLS),
    "labels": _labels,
    "min_version": _tls_version,
    "max_version": _tls_version,
    "truststore": _store(pattern_ok=False),
    "client_keystore": _store(pattern_ok=False),
}

_TARGET_PARSERS: dict[str, Parser] = {
    "keystore": _store(pattern_ok=False),
    "address": _address,
    "name": typed(str, "a non-empty string"),
    "server_name": typed(str, "a host name"),
    "starttls": choice(STARTTLS_CHOICES),
    "timeout": duration,
    "interval": duration,
    **_DEFAULTS_PARSERS,
}


def _target(node: yaml.Node, where: str, common: dict[str, Any], errors: Errors, base: Path) -> Target | None:
    values, nodes = fields(node, where, _TARGET_PARSERS, errors, base)
    if "address" not in values:
        given = isinstance(node, yaml.MappingNode) and any(scalar(k) == "address" for k, _ in node.value)
        if isinstance(node, yaml.MappingNode) and not given:
            errors.add(node, where, "missing required key 'address' (host:port)")
        return None
    merged = {**common, **values}
    host, port = merged.pop("address")
    for ours, theirs in (("truststore", "ca_file"), ("client_keystore", "client_cert")):
        if merged.get(ours) and merged.get(theirs):
            errors.add(nodes.get(ours, node), f"{where}.{ours}", f"give {ours} or {theirs}, not both")
    if merged.get("client_key") and not merged.get("client_cert"):
        errors.add(nodes.get("client_key", node), f"{where}.client_key", "client_key needs client_cert")
    if merged["timeout"] > merged["interval"]:
        errors.add(
            nodes.get("timeout", node),
            f"{where}.timeout",
            f"expected a timeout no longer than the interval ({merged['interval']:g}s)",
        )
    lo, hi = merged.get("min_version"), merged.get("max_version")
    if lo is not None and hi is not None and lo > hi:
        errors.add(
            nodes.get("max_version", node),
            f"{where}.max_version",
            "expected max_version >= min_version",
        )
    name = merged.pop("name", None)
    if name is not None and (not name or not name.isprintable() or len(name) > MAX_NAME_LENGTH):
        errors.add(nodes["name"], f"{where}.name", f"expected printable text of 1 to {MAX_NAME_LENGTH} characters")
    address = Target(name="", host=host, port=port, server_name=host).address
    starttls = merged.pop("starttls", None) or STARTTLS_PORTS.get(port, "none")
    return Target(
        name=name or address,
        starttls=starttls,
        host=host,
        port=port,
        server_name=merged.pop("server_name", host),
        labels=tuple(sorted(merged.pop("labels").items())),
        **merged,
    )


def parse(text: str, path: str = "<config>") -> Config:
    """Validate YAML text into a Config; raise ConfigError listing every problem found."""
    errors = Errors(path)
    base = Path(path).parent if path != "<config>" else Path.cwd()
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"{path}{line}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from None
    if root is None:
        raise ConfigError([f"{path}: the file is empty; expected a mapping with 'targets'"])

    top_parsers: dict[str, Parser] = {
        **_GLOBAL_PARSERS,
        "defaults": lambda n, w, e, b: n,
        "targets": lambda n, w, e, b: n,
        "files": lambda n, w, e, b: n,
        "discover": lambda n, w, e, b: n,
    }
    values, _ = fields(root, "", top_parsers, errors, base)
    settings = {**GLOBAL_DEFAULTS, **{k: v for k, v in values.items() if k in _GLOBAL_PARSERS}}
    if not 1 <= settings["concurrency"] <= 100_000:
        errors.add(root, "concurrency", "expected a whole number from 1 to 100000")

    common = {**TARGET_DEFAULTS, "timeout": settings["timeout"], "interval": settings["interval"]}
    if "defaults" in values:
        defaults, _ = fields(values["defaults"], "defaults", _DEFAULTS_PARSERS, errors, base)
        common.update(defaults)

    targets: list[Target] = []
    first_seen: dict[str, int] = {}
    targets_node = values.get("targets")
    if targets_node is not None and not isinstance(targets_node, yaml.SequenceNode):
        errors.add(targets_node, "targets", f"expected a list of targets, got {kind(targets_node)}")
    elif targets_node is not None:
        for index, item in enumerate(targets_node.value):
            target = _target(item, f"targets[{index}]", common, errors, base)
            if target is None:
                continue
            if target.name in first_seen:
                errors.add(
                    item,
                    f"targets[{index}].name",
                    f"duplicate target name {target.name!r} (first at line {first_seen[target.name]})",
                )
                continue
            first_seen[target.name] = item.start_mark.line + 1
            targets.append(target)

    files = _files(values.get("files"), errors, base)
    for found in _discover(values.get("discover"), common, errors, base):
        if isinstance(found, StoreSpec):
            files.append(found)
        elif found.name in first_seen:
            errors.add(values["discover"], "discover", f"a discovered target is named {found.name!r}, like another")
        else:
            first_seen[found.name] = 0
            targets.append(found)
    targets = [_stores_with_passwords(t, files) for t in targets]
    if errors.messages:
        raise ConfigError(errors.messages)
    return Config(
        path=path,
        targets=tuple(targets),
        files=_watched(files, targets),
        warnings=tuple(errors.warnings),
        **settings,
    )


def _files(node: yaml.Node | None, errors: Errors, base: Path) -> list[StoreSpec]:
    if node is None:
        return []
    if not isinstance(node, yaml.SequenceNode):
        errors.add(node, "files", f"expected a list of files, globs or directories, got {kind(node)}")
        return []
    parse_one = _store(pattern_ok=True)
    return [spec for i, item in enumerate(node.value) if (spec := parse_one(item, f"files[{i}]", errors, base))]


def _stores_with_passwords(target: Target, files: list[StoreSpec]) -> Target:
    """A target's store given as a bare path opens the way the `files:` entry of that path says."""
    listed = {spec.path: spec for spec in files if not glob.has_magic(spec.path)}
    changes: dict[str, Any] = {}
    for key in ("truststore", "client_keystore", "keystore"):
        spec: StoreSpec | None = getattr(target, key)
        if spec is not None and spec == StoreSpec(spec.path) and spec.path in listed:
            changes[key] = listed[spec.path]
    return replace(target, **changes) if changes else target


def _watched(files: list[StoreSpec], targets: list[Target]) -> tuple[StoreSpec, ...]:
    """Every file to watch: those listed, then the stores targets name; one spec per path."""
    named = [s for t in targets for s in (t.truststore, t.client_keystore, t.keystore) if s is not None]
    by_path: dict[str, StoreSpec] = {}
    for spec in [*files, *named]:
        by_path.setdefault(spec.path, spec)
    return tuple(by_path.values())


def _discover(node: yaml.Node | None, common: dict[str, Any], errors: Errors, base: Path) -> list[Target | StoreSpec]:
    """Targets and files derived from products' own config files (see discover/)."""
    if node is None:
        return []
    from . import discover  # discover builds Targets, so it imports this module

    found: list[Target | StoreSpec] = []
    for product, value_node in mapping(node, "discover", errors):
        where = f"discover.{product}"
        if product not in discover.PRODUCTS:
            errors.add(value_node, where, f"unknown product; expected one of {', '.join(sorted(discover.PRODUCTS))}")
            continue
        options: dict[str, Any]
        if isinstance(value_node, yaml.ScalarNode):
            options = {"path": readable_file(value_node, where, errors, base)}
        else:
            options, _ = fields(value_node, where, _DISCOVER_PARSERS, errors, base)
            given = isinstance(value_node, yaml.MappingNode) and any(scalar(k) == "path" for k, _ in value_node.value)
            if isinstance(value_node, yaml.MappingNode) and not given:
                errors.add(value_node, where, f"missing required key 'path' (of {product}'s config file)")
        if options.get("path") is None:
            continue
        try:
            result = discover.PRODUCTS[product](options["path"], options.get("address"))
        except ConfigError as exc:
            errors.messages.extend(exc.messages)
            continue
        labels = {**common["labels"], **options.get("labels", {})}
        for values in result.targets:
            found.append(_discovered_target(common, labels, values))
        found.extend(result.files)
    return found


def _discovered_target(common: dict[str, Any], labels: dict[str, str], values: dict[str, Any]) -> Target:
    """Our defaults under what the product's file says. A store the file names replaces the PEM
    equivalent of the defaults (truststore for ca_file, client_keystore for client_cert); where the
    file names none, the defaults' own trust and client certificate apply."""
    merged = {**common, **{key: value for key, value in values.items() if value is not None}}
    if values.get("truststore") is not None:
        merged["ca_file"] = None
    if values.get("client_keystore") is not None:
        merged["client_cert"] = merged["client_key"] = None
    merged["labels"] = tuple(sorted({**labels, **values.get("labels", {})}.items()))
    return Target(**merged)


_DISCOVER_PARSERS: dict[str, Parser] = {
    "path": readable_file,
    "address": typed(str, "a host name or IP address to probe instead of the one the file gives"),
    "labels": _labels,
}


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc}"]) from None
    return parse(text, str(path))
