"""Discovery: targets and files derived from a product's own configuration file.

Strategy: one small interface, one module per product, a table to pick it by name (the key under
`discover:` in our config). A discoverer reads one file and returns target fields (the keys a
`targets:` entry takes, already typed) and the stores to watch; config.py applies the defaults and
builds the Targets. Its errors are ConfigErrors located in the product's file, so they read, and
fail a load or a reload, exactly like errors in our own config. Reading happens at every load,
so SIGHUP re-discovers.
"""

from __future__ import annotations

from collections.abc import Callable

from . import cassandra, kafka
from .common import Discovered

# (path of the product's config file, address to probe instead of the one it names) -> Discovered
Discoverer = Callable[[str, str | None], Discovered]

PRODUCTS: dict[str, Discoverer] = {
    "cassandra": cassandra.discover,
    "kafka": kafka.discover,
}

__all__ = ["PRODUCTS", "Discovered", "Discoverer"]
