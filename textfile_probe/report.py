"""The human view of a probe result: what `openssl s_client | openssl x509 -text` was used for.

Pure text rendering; the CLI prints it.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

from .certs import CertInfo
from .files import FileResult
from .probe import ProbeResult

_DAY = 86400.0


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _cert_lines(position: int, cert: CertInfo, now: float) -> list[str]:
    days = (cert.not_after - now) / _DAY
    status = "EXPIRED" if days < 0 else ("NOT YET VALID" if cert.not_before > now else f"{days:.1f} days left")
    names = [f"DNS:{n}" for n in cert.dns_names] + [f"IP:{n}" for n in cert.ip_addresses]
    return [
        f"  [{position}] {cert.subject or '(empty subject)'}",
        f"      issuer:    {cert.issuer}",
        f"      validity:  {_when(cert.not_before)} to {_when(cert.not_after)} ({status})",
        f"      key:       {cert.key}, signed with {cert.signature_algorithm}",
        f"      serial:    {cert.serial}",
        f"      sha256:    {cert.fingerprint_sha256}",
        *([f"      names:     {', '.join(names)}"] if names else []),
    ]


def render_text(result: ProbeResult, now: float | None = None) -> str:
    """A multi-line, human-readable description of one probe result."""
    now = time.time() if now is None else now
    target = result.target
    phases = ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in result.phases)
    outcome = "OK" if result.success else f"FAILED at {result.stage.value if result.stage else '?'}: {result.reason}"
    lines = [
        f"target:      {target.name} ({target.address}, server name {target.server_name})",
        f"result:      {outcome}" + (f" ({result.detail})" if result.detail and not result.success else ""),
        f"timing:      {result.duration * 1000:.1f} ms ({phases or 'no phase completed'})",
    ]
    if target.starttls != "none":
        lines.append(f"starttls:    {target.starttls}")
    if result.ip_protocol:
        lines.append(f"ip protocol: IPv{result.ip_protocol}")
    if result.tls_version:
        lines.append(f"tls:         {result.tls_version.label}, {result.cipher}")
    if result.verify_result:
        verified = "ok" if result.verify_result == "ok" else f"FAILED: {result.verify_result}"
        lines.append(f"verify:      {verified}" + ("" if target.verify else " (not required: verify is off)"))
    if result.peer_chain:
        lines.append(f"chain sent by the server ({len(result.peer_chain)} certificates):")
        for position, cert in enumerate(result.peer_chain):
            lines += _cert_lines(position, cert, now)
    return "\n".join(lines) + "\n"


def render_file_text(read: FileResult, now: float | None = None) -> str:
    """A file's certificates, entry by entry, in the same shape as an endpoint's chain."""
    now = time.time() if now is None else now
    outcome = "OK" if read.ok else f"FAILED: {read.reason}" + (f" ({read.detail})" if read.detail else "")
    lines = [f"file:        {read.path}", f"result:      {outcome}"]
    if read.format:
        lines.append(f"format:      {read.format}, {len(read.certs)} certificates")
    if read.modified is not None:
        lines.append(f"modified:    {_when(read.modified)}")
    entry_of = None
    for store_cert, cert in read.certs:
        if (store_cert.alias, store_cert.entry) != entry_of or store_cert.position == 0:
            entry_of = (store_cert.alias, store_cert.entry)
            alias = f"alias {store_cert.alias!r}, " if store_cert.alias else ""
            lines.append(f"entry:       {alias}{store_cert.entry.replace('_', ' ')}")
        lines += _cert_lines(store_cert.position, cert, now)
    return "\n".join(lines) + "\n"
