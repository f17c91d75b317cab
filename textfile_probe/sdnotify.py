"""Tell systemd how the daemon is doing: the sd_notify datagram protocol, in a few lines of our own.

Strategy: a message is newline-separated `KEY=value` assignments sent as one datagram to the
AF_UNIX socket named by `$NOTIFY_SOCKET` (a path, or the abstract namespace when it starts with
'@'). Each message uses a fresh non-blocking socket, so there is no state to go stale and a full
receive queue drops a message instead of blocking the event loop. Not running under systemd
(`$NOTIFY_SOCKET` unset) makes `send` a no-op, and a failed send is logged at debug and never
raised: being supervised must never be the reason the daemon stops. The watchdog interval comes
from `$WATCHDOG_USEC`, and only when `$WATCHDOG_PID` is unset or names this process.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger("textfile_probe")


def _socket_address(value: str) -> str | None:
    """The AF_UNIX address of `$NOTIFY_SOCKET`, or None for one we cannot use (e.g. `vsock:`)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _watchdog_seconds(environ: Mapping[str, str], pid: int) -> float | None:
    usec, owner = environ.get("WATCHDOG_USEC", ""), environ.get("WATCHDOG_PID", "")
    if owner and (not owner.isdigit() or int(owner) != pid):
        return None  # the watchdog is meant for another process (e.g. our parent)
    return int(usec) / 1e6 if usec.isdigit() and int(usec) > 0 else None


@dataclass(frozen=True)
class Notifier:
    """Where to send notifications (None: not supervised) and the watchdog interval in seconds."""

    address: str | None = None
    watchdog_interval: float | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address = _socket_address(raw) if raw else None
        if raw and address is None:
            log.debug("NOTIFY_SOCKET is not an AF_UNIX address; not notifying", extra={"notify_socket": raw})
        watchdog = _watchdog_seconds(env, os.getpid() if pid is None else pid)
        return cls(address, watchdog if address is not None else None)

    def send(self, message: str) -> bool:
        """Send `message` (e.g. "READY=1\\nSTATUS=..."); True if it was handed to the socket."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message.encode("utf-8", "replace"), self.address)
        except (OSError, ValueError) as exc:  # ValueError: an address Python refuses to encode
            log.debug("sd_notify failed", extra={"state": message.split("\n", 1)[0], "error": exc})
            return False
        return True
