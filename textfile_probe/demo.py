"""`textfile-probe demo`: the whole pipeline end to end on this machine, with no outside network.

It makes a throwaway CA and two server certificates (one valid, one expired), serves them from
TLS endpoints on 127.0.0.1, writes a config naming them, runs real probe cycles through the same
daemon code as `run`, and prints the resulting .prom file. The expired endpoint's certificate has
been "renewed" on disk but not loaded, so its served-versus-disk gauge shows 0; the CA file is
watched as a certificate file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from . import config as config_mod
from .scheduler import Daemon

_Key = ec.EllipticCurvePrivateKey


def _certificate(cn: str, key: _Key, issuer: tuple[x509.Name, _Key] | None, days: tuple[int, int]) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_name, signer = issuer or (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=days[0]))
        .not_valid_after(now + dt.timedelta(days=days[1]))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(signer, hashes.SHA256())


def _pem(*items: x509.Certificate | _Key) -> bytes:
    out = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            out += item.public_bytes(serialization.Encoding.PEM)
        else:
            out += item.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    return out


def _server_context(directory: Path, name: str, cert: x509.Certificate, key: _Key) -> ssl.SSLContext:
    path = directory / f"{name}.pem"
    path.write_bytes(_pem(cert, key))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(path)
    return ctx


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.read(1024)
    except (OSError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def _demo(directory: Path, cycles: int) -> str:
    ca_key, ok_key, old_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _certificate("textfile-probe demo CA", ca_key, None, (-1, 30))
    issuer = (ca.subject, ca_key)
    good = _certificate("localhost", ok_key, issuer, (-1, 20))
    expired = _certificate("localhost", old_key, issuer, (-30, -2))
    renewed = _certificate("localhost", old_key, issuer, (-1, 25))
    (directory / "ca.pem").write_bytes(_pem(ca))
    (directory / "renewed.pem").write_bytes(_pem(renewed, old_key))

    servers = [
        await asyncio.start_server(_serve, "127.0.0.1", 0, ssl=_server_context(directory, n, c, k))
        for n, c, k in (("valid", good, ok_key), ("expired", expired, old_key))
    ]
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    config_path = directory / "config.yml"
    config_path.write_text(
        f"""# written by textfile-probe demo
output: {directory / "textfile_probe.prom"}
interval: 5s
timeout: 2s
defaults:
  ca_file: {directory / "ca.pem"}
  labels: {{env: demo}}
targets:
  - {{name: valid, address: "127.0.0.1:{ports[0]}", server_name: localhost, keystore: valid.pem}}
  - {{name: expired, address: "127.0.0.1:{ports[1]}", server_name: localhost, keystore: renewed.pem}}
  - {{name: closed-port, address: "127.0.0.1:1", timeout: 1s}}
files:
  - ca.pem
"""
    )
    config = config_mod.load(config_path)
    daemon = Daemon(config)
    try:
        for number in range(cycles):
            if not await daemon.cycle(config.targets):
                raise SystemExit("demo: could not write the output file")
            print(
                f"cycle {number + 1}: "
                + ", ".join(f"{r.target.name}={'ok' if r.success else r.reason}" for r in daemon.current_results())
            )
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
    return Path(config.output).read_text()


def run_demo(cycles: int = 2, keep: str | None = None) -> int:
    """Run the demo; print the config location and the .prom file. Returns an exit code."""
    with tempfile.TemporaryDirectory(prefix="textfile-probe-demo-") as tmp:
        directory = Path(keep) if keep else Path(tmp)
        directory.mkdir(parents=True, exist_ok=True)
        print(f"demo: serving a valid and an expired certificate on 127.0.0.1; files in {directory}")
        text = asyncio.run(_demo(directory, cycles))
        print(f"\n--- {directory / 'textfile_probe.prom'} ---")
        print(text, end="")
    return 0
