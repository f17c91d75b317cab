"""STARTTLS against the real servers from Debian's packages (tests/realservers.py).

For every protocol the probe goes through a real server's dialogue and must come back with our leaf;
on the standard ports the protocol is inferred from the port alone; servers without TLS fail at the
starttls stage; LDAPS is plain TLS; MariaDB works whether or not it requires secure transport;
Postfix can require a client certificate after STARTTLS. Each server starts once per module, on a
loopback address of its own. A test is skipped only when its server binary is not installed, or (the
inference tests) when the standard port cannot be bound there: that needs root.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import realservers as rs
from pki import Pki
from realservers import Endpoint

from textfile_probe import config
from textfile_probe.config import Target
from textfile_probe.errors import Stage
from textfile_probe.probe import ProbeResult, probe

TIMEOUT = 10.0  # per probe; servers answer in milliseconds (InspIRCd after its 1 s host lookup)
NO_TLS_TIMEOUT = 4.0  # where a server without TLS may leave STARTTLS unanswered


def _server(name: str, factory: Callable[..., Any], **options: Any) -> Any:
    """A module-scoped fixture called `name` that runs one real server for the whole module."""

    def server(pki: Pki) -> Iterator[Endpoint]:
        with factory(pki, **options) as endpoint:
            yield endpoint

    return pytest.fixture(scope="module", name=name)(server)


postfix = _server("postfix", rs.postfix_server)
dovecot = _server("dovecot", rs.dovecot_server)
dovecot_no_tls = _server("dovecot_no_tls", rs.dovecot_server, tls=False)
vsftpd = _server("vsftpd", rs.vsftpd_server)
vsftpd_no_tls = _server("vsftpd_no_tls", rs.vsftpd_server, tls=False)
slapd = _server("slapd", rs.slapd_server)
slapd_no_tls = _server("slapd_no_tls", rs.slapd_server, tls=False)
postgres = _server("postgres", rs.postgres_server)
postgres_no_tls = _server("postgres_no_tls", rs.postgres_server, tls=False)
mariadb = _server("mariadb", rs.mariadb_server)
mariadb_tls_required = _server("mariadb_tls_required", rs.mariadb_server, require_secure_transport=True)
mariadb_no_tls = _server("mariadb_no_tls", rs.mariadb_server, tls=False)
prosody = _server("prosody", rs.prosody_server)
prosody_no_tls = _server("prosody_no_tls", rs.prosody_server, tls=False)
inn = _server("inn", rs.inn_server)
inn_no_tls = _server("inn_no_tls", rs.inn_server, tls=False)
inspircd = _server("inspircd", rs.inspircd_server)
inspircd_no_tls = _server("inspircd_no_tls", rs.inspircd_server, tls=False)


def target(server: Endpoint, port: str, starttls: str, **overrides: Any) -> Target:
    settings: dict[str, Any] = {
        "name": port,
        "server_name": "localhost",
        "ca_file": str(server.info["tls"].ca),
        "timeout": TIMEOUT,
        **overrides,
    }
    return Target(host=server.host, port=server.info["ports"][port], starttls=starttls, **settings)


def run(t: Target) -> ProbeResult:
    return asyncio.run(probe(t))


def assert_serves_our_leaf(result: ProbeResult, server: Endpoint) -> None:
    context = f"{result.stage}/{result.reason}: {result.detail}\n{rs.log_tail(server)}"
    assert (result.success, result.stage, result.reason) == (True, None, None), context
    assert result.peer_chain[0].fingerprint_sha256 == rs.fingerprint(server.info["tls"].leaf), context
    assert result.peer_chain[0].subject_cn == "localhost"
    assert result.tls_version is not None


# (server fixture, port name, starttls protocol, the standard port the protocol is inferred from)
PROTOCOLS = [
    ("postfix", "smtp", "smtp", 25),
    ("postfix", "submission", "smtp", 587),
    ("dovecot", "lmtp", "lmtp", None),  # the contract infers nothing for LMTP
    ("dovecot", "imap", "imap", 143),
    ("dovecot", "pop3", "pop3", 110),
    ("dovecot", "sieve", "sieve", 4190),
    ("vsftpd", "ftp", "ftp", 21),
    ("slapd", "ldap", "ldap", 389),
    ("postgres", "postgres", "postgres", 5432),
    ("mariadb", "mysql", "mysql", 3306),
    ("mariadb_tls_required", "mysql", "mysql", 3306),
    ("prosody", "c2s", "xmpp", 5222),
    ("prosody", "s2s", "xmpp-server", 5269),
    ("inn", "nntp", "nntp", 119),
    ("inspircd", "irc", "irc", 6667),
]


def _cases(rows: Iterable[tuple[Any, ...]]) -> list[Any]:
    return [pytest.param(*row, id=f"{row[0]}-{row[1]}") for row in rows]


@pytest.mark.parametrize(("fixture", "port", "starttls", "standard"), _cases(PROTOCOLS))
def test_probe_through_the_real_server_gets_its_certificate(
    request: pytest.FixtureRequest, fixture: str, port: str, starttls: str, standard: int | None
) -> None:
    server = request.getfixturevalue(fixture)
    assert_serves_our_leaf(run(target(server, port, starttls)), server)


@pytest.mark.parametrize(("fixture", "port", "starttls", "standard"), _cases(p for p in PROTOCOLS if p[3]))
def test_a_target_on_the_standard_port_needs_no_starttls_key(
    request: pytest.FixtureRequest, fixture: str, port: str, starttls: str, standard: int
) -> None:
    server = request.getfixturevalue(fixture)
    if server.info["ports"][port] != standard:
        pytest.skip(f"port {standard} could not be bound on {server.host} (not root, or taken): see the config test")
    text = (
        "targets:\n"
        f"  - address: {server.host}:{standard}\n"
        "    server_name: localhost\n"
        f"    ca_file: {server.info['tls'].ca}\n"
    )
    (parsed,) = config.parse(text).targets
    assert parsed.starttls == starttls
    assert_serves_our_leaf(run(parsed), server)


def test_config_infers_starttls_from_the_well_known_ports_only() -> None:
    inferred = {
        25: "smtp", 587: "smtp", 389: "ldap", 5432: "postgres", 3306: "mysql", 143: "imap", 110: "pop3",
        21: "ftp", 5222: "xmpp", 5269: "xmpp-server", 119: "nntp", 4190: "sieve", 6667: "irc",
        443: "none", 465: "none", 636: "none", 993: "none", 9142: "none", 2525: "none",
    }  # fmt: skip
    text = "targets:\n" + "".join(f"  - address: db.example:{port}\n" for port in inferred)
    assert {t.port: t.starttls for t in config.parse(text).targets} == inferred


def test_an_explicit_starttls_key_beats_the_port() -> None:
    text = (
        "targets:\n"
        "  - {address: 'mx.example:25', starttls: none}\n"
        "  - {address: 'mx.example:2525', starttls: smtp}\n"
        "  - {address: 'ldap.example:389', starttls: postgres}\n"
    )
    assert [t.starttls for t in config.parse(text).targets] == ["none", "smtp", "postgres"]


def test_ldaps_is_plain_tls_with_starttls_none(slapd: Endpoint) -> None:
    explicit = run(target(slapd, "ldaps", "none"))
    assert_serves_our_leaf(explicit, slapd)
    # 636 is not a STARTTLS port: a target there infers "none" by itself.
    text = f"targets:\n  - address: {slapd.host}:{slapd.info['ports']['ldaps']}\n    server_name: localhost\n"
    text += f"    ca_file: {slapd.info['tls'].ca}\n"
    (parsed,) = config.parse(text).targets
    assert parsed.starttls == "none"
    assert_serves_our_leaf(run(parsed), slapd)


def test_starttls_against_the_ldaps_port_fails_at_starttls(slapd: Endpoint) -> None:
    # slapd waits for a TLS ClientHello and drops an LDAP request: the dialogue cannot complete.
    result = run(target(slapd, "ldaps", "ldap", timeout=NO_TLS_TIMEOUT))
    assert (result.success, result.stage) == (False, Stage.STARTTLS), result.detail
    assert result.reason in ("protocol_error", "timeout")


# (server fixture, port name, protocol, reasons accepted). What each server sends, as recorded:
NOT_OFFERED = [
    # Greeting "* OK [CAPABILITY ... AUTH=PLAIN]" without STARTTLS; "a BAD TLS support isn't enabled."
    ("dovecot_no_tls", "imap", "imap", {"not_offered"}),
    # CAPA list without STLS; STLS gets "-ERR TLS support isn't enabled."
    ("dovecot_no_tls", "pop3", "pop3", {"not_offered"}),
    # Greeting capability lines without "STARTTLS"; STARTTLS gets NO "TLS support isn't enabled."
    ("dovecot_no_tls", "sieve", "sieve", {"not_offered"}),
    # LHLO reply without STARTTLS; STARTTLS gets "502 5.5.1 TLS support is not enabled."
    ("dovecot_no_tls", "lmtp", "lmtp", {"not_offered"}),
    # FEAT without "AUTH TLS"; AUTH TLS gets "530 Please login with USER and PASS." (not a 50x).
    ("vsftpd_no_tls", "ftp", "ftp", {"not_offered", "rejected"}),
    # ExtendedResponse resultCode 2 (protocolError) "unsupported extended operation".
    ("slapd_no_tls", "ldap", "ldap", {"not_offered", "rejected"}),
    # The SSLRequest is answered "N".
    ("postgres_no_tls", "postgres", "postgres", {"not_offered"}),
    # The greeting's capability flags lack CLIENT_SSL (0x800).
    ("mariadb_no_tls", "mysql", "mysql", {"not_offered"}),
    # <stream:features> without <starttls/>; a <starttls/> anyway ends the stream (unsupported-stanza-type).
    ("prosody_no_tls", "c2s", "xmpp", {"not_offered"}),
    ("prosody_no_tls", "s2s", "xmpp-server", {"not_offered"}),
    # INN still lists STARTTLS in CAPABILITIES, then answers "580 Error initializing TLS".
    ("inn_no_tls", "nntp", "nntp", {"rejected"}),
    # No "tls" in CAP LS; a STARTTLS before registration gets no answer at all.
    ("inspircd_no_tls", "irc", "irc", {"not_offered"}),
]


@pytest.mark.parametrize(("fixture", "port", "starttls", "reasons"), _cases(NOT_OFFERED))
def test_a_server_without_tls_fails_at_starttls(
    request: pytest.FixtureRequest, fixture: str, port: str, starttls: str, reasons: set[str]
) -> None:
    server = request.getfixturevalue(fixture)
    result = run(target(server, port, starttls, timeout=NO_TLS_TIMEOUT))
    context = f"{result.stage}/{result.reason}: {result.detail}\n{rs.log_tail(server)}"
    assert (result.success, result.stage) == (False, Stage.STARTTLS), context
    assert result.reason in reasons, context
    assert result.peer_chain == ()


def test_postfix_without_tls_is_not_offered(postfix: Endpoint) -> None:
    # EHLO reply without STARTTLS (a STARTTLS anyway gets "502 5.5.1 Error: command not implemented").
    result = run(target(postfix, "smtp_plain", "smtp"))
    assert (result.success, result.stage, result.reason) == (False, Stage.STARTTLS, "not_offered"), result.detail


def test_postfix_requiring_a_client_certificate_accepts_ours(postfix: Endpoint) -> None:
    result = run(
        target(
            postfix,
            "smtp_ccert",
            "smtp",
            client_cert=postfix.info["client_cert"],
            client_key=postfix.info["client_key"],
        )
    )
    assert_serves_our_leaf(result, postfix)


def test_postfix_requiring_a_client_certificate_still_shows_its_chain_to_us(postfix: Endpoint) -> None:
    # Postfix does not fail the handshake without a client certificate: it completes it, then says
    # "421 4.7.1 ... Error: No client certificate presented" inside TLS and closes. Whatever the
    # verdict, the chain it sent is known and verified.
    result = run(target(postfix, "smtp_ccert", "smtp"))
    assert result.stage in (None, Stage.HANDSHAKE), result.detail
    assert result.peer_chain[0].fingerprint_sha256 == rs.fingerprint(postfix.info["tls"].leaf)
    assert result.verify_result == "ok"


def test_xmpp_sends_the_server_name_as_the_domain(prosody: Endpoint) -> None:
    # Prosody serves only "localhost": another domain in the stream header is refused before TLS
    # (<host-unknown/> stream error), which proves where the domain comes from.
    result = run(target(prosody, "c2s", "xmpp", server_name="other.example"))
    assert (result.success, result.stage) == (False, Stage.STARTTLS), result.detail
    assert result.reason in ("rejected", "protocol_error")


def test_cli_probe_with_starttls_prints_the_chain(dovecot: Endpoint) -> None:
    address = f"{dovecot.host}:{dovecot.info['ports']['imap']}"
    ca = str(dovecot.info["tls"].ca)
    command = [sys.executable, "-m", "textfile_probe", "probe", address, "--starttls", "imap"]
    command += ["--ca-file", ca, "--server-name", "localhost"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert rs.fingerprint(dovecot.info["tls"].leaf) in done.stdout
