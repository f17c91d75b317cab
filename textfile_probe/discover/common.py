"""What every discoverer shares: the result shape and how a bind address becomes a probe address."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Any

from ..config import StoreSpec


@dataclass(frozen=True)
class Discovered:
    targets: tuple[dict[str, Any], ...] = ()  # fields of config.Target, without the defaults
    files: tuple[StoreSpec, ...] = field(default_factory=tuple)


def probe_host(bind: str | None) -> str:
    """Where to connect, on this node, to reach a server bound to `bind`: a wildcard bind is
    reached on loopback, an empty one (the JVM's "this host's name") through the host name."""
    if bind is None or not bind.strip():
        return socket.gethostname()
    try:
        address = ipaddress.ip_address(bind.strip())
    except ValueError:
        return bind.strip()
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return str(address)


def unique(specs: list[StoreSpec | None]) -> tuple[StoreSpec, ...]:
    seen: dict[str, StoreSpec] = {}
    for spec in specs:
        if spec is not None:
            seen.setdefault(spec.path, spec)
    return tuple(seen.values())
