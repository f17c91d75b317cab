"""Discovery through our config: cassandra.yaml and Kafka's server.properties become exact Targets and files.

Every fixture in tests/discovery/ is loaded the way a user loads it, with `discover:` in a config.yml
and `config.load`, so our defaults, `address:` and `labels:` apply as in production. Errors in the
product's file must read like errors in ours. `parse_properties` is checked against the real
`java.util.Properties.load` (one JVM for the whole table). Cases marked "product disagrees" in a
comment fail today on purpose: they show where the product differs from Cassandra, Kafka or Java.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from textfile_probe import config
from textfile_probe.cli import main
from textfile_probe.config import Config, StoreSpec, Target, TlsVersion
from textfile_probe.discover.kafka import parse_properties
from textfile_probe.errors import ConfigError
from textfile_probe.files import FileWatcher
from textfile_probe.scheduler import Daemon

FIXTURES = Path(__file__).parent / "discovery"

# Our own settings, so every discovered target must show they were applied.
HEAD = "interval: 30s\ntimeout: 3s\ndefaults:\n  labels: {env: prod}\n  min_version: TLS1.2\n"


def copy_fixture(name: str, directory: Path) -> Path:
    """The fixture with its KEYSTORE_DIR placeholder pointing into `directory`."""
    path = directory / name
    path.write_text((FIXTURES / name).read_text(encoding="utf-8").replace("KEYSTORE_DIR", str(directory)))
    return path


def write_config(directory: Path, discover: str, head: str = HEAD) -> Path:
    path = directory / "config.yml"
    path.write_text(f"{head}discover:\n{discover}")
    return path


def load_fixture(tmp_path: Path, product: str, name: str) -> Config:
    return config.load(write_config(tmp_path, f"  {product}: {copy_fixture(name, tmp_path)}\n"))


def load_text(tmp_path: Path, product: str, text: str, options: str = "", name: str = "") -> Config:
    """Discover from `text` written as the product's file; `options` are extra discover keys (indented)."""
    path = tmp_path / (name or ("cassandra.yaml" if product == "cassandra" else "server.properties"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return config.load(write_config(tmp_path, f"  {product}:\n    path: {path}\n{options}"))


def store(directory: Path, file: str, fmt: str, password: str | None) -> StoreSpec:
    return StoreSpec(path=str(directory / file), format=fmt, password=password)


def discovered(
    name: str,
    host: str,
    port: int,
    *,
    server_name: str | None = None,
    verify_hostname: bool = False,
    truststore: StoreSpec | None = None,
    keystore: StoreSpec | None = None,
    client_keystore: StoreSpec | None = None,
) -> Target:
    """A discovered target as our config must build it from HEAD's settings."""
    return Target(
        name=name,
        host=host,
        port=port,
        server_name=server_name or host,
        verify=True,
        verify_hostname=verify_hostname,
        timeout=3.0,
        interval=30.0,
        labels=(("env", "prod"),),
        min_version=TlsVersion.TLS1_2,
        starttls="none",
        truststore=truststore,
        keystore=keystore,
        client_keystore=client_keystore,
    )


def endpoints(loaded: Config) -> list[tuple[str, str, int, str]]:
    return [(t.name, t.host, t.port, t.server_name) for t in loaded.targets]


def messages(caught: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return caught.value.messages


# --------------------------------------------------------------------------------------------------
# Cassandra fixtures, each through our config: exact targets and exact watched files
# --------------------------------------------------------------------------------------------------


def test_cassandra_3_11_dual_native_port_and_ssl_storage_port(tmp_path: Path) -> None:
    loaded = load_fixture(tmp_path, "cassandra", "cassandra-3.11.yaml")
    keystore = store(tmp_path, "keystore.jks", "jks", "cassandra")
    truststore = store(tmp_path, "truststore.jks", "jks", "cassandra")
    assert loaded.targets == (
        # native_transport_port_ssl 9142 differs from 9042: 9042 stays plain, TLS is on 9142
        discovered("cassandra/native", "10.0.0.11", 9142, truststore=truststore, keystore=keystore),
        # 3.x: internode TLS on ssl_storage_port; server require_client_auth -> our own keystore as client
        discovered(
            "cassandra/internode", "10.0.0.11", 7001, truststore=truststore, keystore=keystore, client_keystore=keystore
        ),
    )
    assert loaded.files == (keystore, truststore)
    assert loaded.warnings == ()  # passwords come from cassandra.yaml, not written in our config


def test_cassandra_4_0_single_ports_pkcs12_client_side_jks_server_side(tmp_path: Path) -> None:
    loaded = load_fixture(tmp_path, "cassandra", "cassandra-4.0.yaml")
    client_keystore = store(tmp_path, "keystore.p12", "pkcs12", "cassandra")
    client_truststore = store(tmp_path, "truststore.p12", "pkcs12", "cassandra")
    keystore = store(tmp_path, "keystore.jks", "jks", "cassandra")
    truststore = store(tmp_path, "truststore.jks", "jks", "cassandra")
    assert loaded.targets == (
        discovered("cassandra/native", "10.0.0.21", 9142, truststore=client_truststore, keystore=client_keystore),
        # 4.0: internode TLS on storage_port; nothing on 7001 (legacy port off)
        discovered(
            "cassandra/internode", "10.0.0.21", 7000, truststore=truststore, keystore=keystore, client_keystore=keystore
        ),
    )
    assert loaded.files == (client_keystore, client_truststore, keystore, truststore)


def test_cassandra_4_1_optional_native_and_dc_internode_use_the_server_truststore(tmp_path: Path) -> None:
    loaded = load_fixture(tmp_path, "cassandra", "cassandra-4.1.yaml")
    keystore = store(tmp_path, "keystore.jks", "jks", "k3ystore-pass")
    truststore = store(tmp_path, "truststore.jks", "jks", "trust-pass")
    assert loaded.targets == (
        # optional: true on 9042 (plain and TLS); the client block names no truststore: the server's is used
        discovered("cassandra/native", "10.0.1.31", 9042, truststore=truststore, keystore=keystore),
        # internode_encryption: dc -> 7000 carries TLS; require_client_auth false -> no client certificate
        discovered("cassandra/internode", "10.0.1.31", 7000, truststore=truststore, keystore=keystore),
    )
    assert loaded.files == (keystore, truststore)


def test_cassandra_5_0_wildcard_rpc_address_pem_client_stores_and_outbound_keystore(tmp_path: Path) -> None:
    loaded = load_fixture(tmp_path, "cassandra", "cassandra-5.0.yaml")
    pem_keystore = store(tmp_path, "client-keystore.pem", "pem", None)
    pem_truststore = store(tmp_path, "client-truststore.pem", "pem", None)
    keystore = store(tmp_path, "keystore.jks", "jks", "cassandra")
    truststore = store(tmp_path, "truststore.jks", "jks", "cassandra")
    outbound = store(tmp_path, "outbound-keystore.jks", "jks", "cassandra")
    assert loaded.targets == (
        # rpc_address 0.0.0.0: probed on loopback, the name checked is broadcast_rpc_address
        discovered(
            "cassandra/native",
            "127.0.0.1",
            9042,
            server_name="10.0.2.41",
            truststore=pem_truststore,
            keystore=pem_keystore,
        ),
        # require_client_auth: the outbound_keystore (what peers present), not the inbound keystore
        discovered(
            "cassandra/internode", "10.0.2.41", 7000, truststore=truststore, keystore=keystore, client_keystore=outbound
        ),
    )
    assert loaded.files == (pem_keystore, pem_truststore, keystore, truststore, outbound)


def test_cassandra_disabled_yields_no_targets_and_no_files(tmp_path: Path) -> None:
    loaded = load_fixture(tmp_path, "cassandra", "cassandra-disabled.yaml")
    assert loaded.targets == ()
    assert loaded.files == ()


def test_cassandra_missing_store_files_still_yield_targets_and_are_reported_not_found(tmp_path: Path) -> None:
    loaded = load_fixture(tmp_path, "cassandra", "cassandra-missing-files.yaml")
    missing = store(tmp_path, "missing.jks", "jks", "cassandra")
    missing_trust = store(tmp_path, "missing-truststore.jks", "jks", "cassandra")
    assert loaded.targets == (
        discovered(
            "cassandra/native", "10.0.4.61", 9042, truststore=missing_trust, keystore=missing, client_keystore=missing
        ),
        discovered(
            "cassandra/internode",
            "10.0.4.61",
            7000,
            truststore=missing_trust,
            keystore=missing,
            client_keystore=missing,
        ),
    )
    assert loaded.files == (missing, missing_trust)
    results = FileWatcher().refresh(loaded.files)
    assert [(r.path, r.reason) for r in results] == [(missing.path, "not_found"), (missing_trust.path, "not_found")]


def test_cassandra_4_0_legacy_ssl_storage_port_adds_a_second_internode_target(tmp_path: Path) -> None:
    loaded = load_fixture(tmp_path, "cassandra", "cassandra-4.0-legacy-ssl-port.yaml")
    keystore = store(tmp_path, "keystore.jks", "jks", "upgrade-pass")
    truststore = store(tmp_path, "truststore.jks", "jks", "upgrade-pass")
    assert loaded.targets == (
        # require_endpoint_verification: true -> the name is checked
        discovered(
            "cassandra/internode", "10.0.3.51", 7000, verify_hostname=True, truststore=truststore, keystore=keystore
        ),
        discovered(
            "cassandra/internode-legacy",
            "10.0.3.51",
            7001,
            verify_hostname=True,
            truststore=truststore,
            keystore=keystore,
        ),
    )
    assert loaded.files == (keystore, truststore)


# --------------------------------------------------------------------------------------------------
# Cassandra semantics on small inline files
# --------------------------------------------------------------------------------------------------

INTERNODE_ALL = (
    "listen_address: 10.1.1.1\nstorage_port: 7000\nssl_storage_port: 7001\n"
    "server_encryption_options:\n  internode_encryption: all\n"
)


BOTH_INTERNODE = [("cassandra/internode", 7000), ("cassandra/internode-legacy", 7001)]


@pytest.mark.parametrize(
    ("top", "section", "expected"),
    [
        pytest.param("start_rpc: false\n", "", [("cassandra/internode", 7001)], id="3.x-start_rpc"),
        pytest.param("rpc_port: 9160\n", "", [("cassandra/internode", 7001)], id="3.x-rpc_port"),
        pytest.param(
            "start_rpc: false\n",
            "  enable_legacy_ssl_storage_port: true\n",
            [("cassandra/internode", 7001)],
            id="3.x-has-no-legacy-key",
        ),
        pytest.param("", "", [("cassandra/internode", 7000)], id="4.0+"),
        pytest.param("", "  enable_legacy_ssl_storage_port: true\n", BOTH_INTERNODE, id="4.0-legacy-name"),
        pytest.param("", "  legacy_ssl_storage_port_enabled: true\n", BOTH_INTERNODE, id="4.1-legacy-name"),
    ],
)
def test_internode_port_is_ssl_storage_port_in_3x_and_storage_port_in_4_0_plus(
    tmp_path: Path, top: str, section: str, expected: list[tuple[str, int]]
) -> None:
    loaded = load_text(tmp_path, "cassandra", top + INTERNODE_ALL + section)
    assert [(t.name, t.port) for t in loaded.targets] == expected


@pytest.mark.parametrize(
    ("ports", "expected"),
    [
        pytest.param("native_transport_port: 9042\nnative_transport_port_ssl: 9142\n", 9142, id="dual-port"),
        pytest.param("native_transport_port: 9042\nnative_transport_port_ssl: 9042\n", 9042, id="same-port"),
        pytest.param("native_transport_port: 9043\n", 9043, id="single-port"),
        pytest.param("", 9042, id="default-port"),
    ],
)
def test_native_tls_port_is_native_transport_port_ssl_when_it_differs(
    tmp_path: Path, ports: str, expected: int
) -> None:
    loaded = load_text(
        tmp_path, "cassandra", f"rpc_address: 10.1.1.1\n{ports}client_encryption_options:\n  enabled: true\n"
    )
    assert endpoints(loaded) == [("cassandra/native", "10.1.1.1", expected, "10.1.1.1")]


def test_optional_native_encryption_with_a_separate_ssl_port_is_probed_on_the_ssl_port(tmp_path: Path) -> None:
    # Product disagrees (4.0+). Cassandra's NativeTransportService: when native_transport_port_ssl differs, the
    # regular port is UNENCRYPTED and the ssl port serves the policy (OPTIONAL here, from `optional: true`).
    # The product moves to the ssl port only when `enabled` is true, so it probes the plaintext 9042 with TLS.
    text = (
        "rpc_address: 10.1.1.1\nnative_transport_port: 9042\nnative_transport_port_ssl: 9142\n"
        "client_encryption_options:\n  enabled: false\n  optional: true\n"
    )
    assert endpoints(load_text(tmp_path, "cassandra", text)) == [("cassandra/native", "10.1.1.1", 9142, "10.1.1.1")]


def test_cassandra_3x_optional_without_enabled_serves_no_native_tls(tmp_path: Path) -> None:
    # Product disagrees (3.x). Cassandra 3.x NativeTransportService starts a plain server only when
    # client_encryption_options.enabled is false; `optional` is read only when enabled. The product
    # treats `optional: true` alone as TLS in every version and probes plaintext 9042 with TLS.
    text = "start_rpc: false\nrpc_address: 10.1.1.1\nclient_encryption_options:\n  enabled: false\n  optional: true\n"
    assert endpoints(load_text(tmp_path, "cassandra", text)) == []


@pytest.mark.parametrize(
    ("addresses", "host", "server_name"),
    [
        pytest.param("rpc_address: 0.0.0.0\nbroadcast_rpc_address: 10.0.2.41\n", "127.0.0.1", "10.0.2.41", id="v4-any"),
        pytest.param("rpc_address: '::'\nbroadcast_rpc_address: '2001:db8::41'\n", "::1", "2001:db8::41", id="v6-any"),
        pytest.param("rpc_address: '::'\n", "::1", "::1", id="v6-any-unadvertised"),
        pytest.param(
            "rpc_address: 10.0.2.41\nbroadcast_rpc_address: 192.0.2.1\n", "10.0.2.41", "10.0.2.41", id="bound"
        ),
        pytest.param("native_transport_address: 10.0.2.42\n", "10.0.2.42", "10.0.2.42", id="dse-name"),
    ],
)
def test_wildcard_rpc_address_is_probed_on_loopback_and_named_by_broadcast_rpc_address(
    tmp_path: Path, addresses: str, host: str, server_name: str
) -> None:
    loaded = load_text(tmp_path, "cassandra", f"{addresses}client_encryption_options:\n  enabled: true\n")
    assert endpoints(loaded) == [("cassandra/native", host, 9042, server_name)]
    assert loaded.targets[0].address == (f"[{host}]:9042" if ":" in host else f"{host}:9042")


def test_interface_names_without_addresses_are_located_errors(tmp_path: Path) -> None:
    path = tmp_path / "cassandra.yaml"
    text = (
        "listen_interface: eth0\nrpc_interface: eth1\n"
        "server_encryption_options:\n  internode_encryption: all\nclient_encryption_options:\n  enabled: true\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, "cassandra", text)
    hint = "an interface name cannot be probed; set `address` under discover.cassandra"
    assert sorted(messages(caught)) == [f"{path}:1: listen_interface: {hint}", f"{path}:2: rpc_interface: {hint}"]


def test_interface_names_with_an_address_override_probe_that_address(tmp_path: Path) -> None:
    text = (
        "listen_interface: eth0\nrpc_interface: eth1\n"
        "server_encryption_options:\n  internode_encryption: all\nclient_encryption_options:\n  enabled: true\n"
    )
    loaded = load_text(tmp_path, "cassandra", text, options="    address: 10.7.7.7\n")
    assert endpoints(loaded) == [
        ("cassandra/native", "10.7.7.7", 9042, "10.7.7.7"),
        ("cassandra/internode", "10.7.7.7", 7000, "10.7.7.7"),
    ]


@pytest.mark.parametrize(
    ("value", "expect_client_cert"),
    [("true", True), ("false", False), ("'true'", True), ("optional", False)],
)
def test_native_require_client_auth_probes_with_the_nodes_keystore(
    tmp_path: Path, value: str, expect_client_cert: bool
) -> None:
    text = (
        "rpc_address: 10.1.1.1\nclient_encryption_options:\n  enabled: true\n"
        f"  keystore: conf/ks.jks\n  keystore_password: pw\n  require_client_auth: {value}\n"
    )
    loaded = load_text(tmp_path, "cassandra", text, name="conf/cassandra.yaml")
    keystore = store(tmp_path / "conf", "ks.jks", "jks", "pw")
    assert loaded.targets[0].keystore == keystore
    assert loaded.targets[0].client_keystore == (keystore if expect_client_cert else None)


def test_relative_store_paths_resolve_above_conf_and_password_files_are_kept(tmp_path: Path) -> None:
    text = (
        "rpc_address: 10.1.1.1\nclient_encryption_options:\n  enabled: true\n"
        "  keystore: conf/.keystore\n  keystore_password_file: conf/ks.pass\n"
        "  truststore: conf/.truststore\n  truststore_password: tpw\n  store_type: pkcs12\n"
    )
    loaded = load_text(tmp_path, "cassandra", text, name="conf/cassandra.yaml")
    keystore = StoreSpec(
        path=str(tmp_path / "conf/.keystore"), format="pkcs12", password_file=str(tmp_path / "conf/ks.pass")
    )
    truststore = StoreSpec(path=str(tmp_path / "conf/.truststore"), format="pkcs12", password="tpw")
    assert (loaded.targets[0].keystore, loaded.targets[0].truststore) == (keystore, truststore)
    assert loaded.files == (keystore, truststore)


# --------------------------------------------------------------------------------------------------
# Our config's settings applied to discovered targets
# --------------------------------------------------------------------------------------------------


def test_discover_address_and_labels_win_over_the_file_and_the_defaults(tmp_path: Path) -> None:
    source = copy_fixture("cassandra-5.0.yaml", tmp_path)
    head = (
        "interval: 2m\ntimeout: 5s\ndefaults:\n  verify: false\n  ip_protocol: ip4\n  labels: {env: prod, rack: r1}\n"
    )
    options = f"  cassandra:\n    path: {source}\n    address: 192.0.2.9\n    labels: {{rack: r2, role: db}}\n"
    loaded = config.load(write_config(tmp_path, options, head=head))
    assert endpoints(loaded) == [
        ("cassandra/native", "192.0.2.9", 9042, "10.0.2.41"),  # broadcast_rpc_address still names it
        ("cassandra/internode", "192.0.2.9", 7000, "10.0.2.41"),  # broadcast_address
    ]
    for target in loaded.targets:
        assert (target.timeout, target.interval, target.verify, target.ip_protocol) == (5.0, 120.0, False, "ip4")
        assert target.labels == (("env", "prod"), ("rack", "r2"), ("role", "db"))


def test_cassandra_and_kafka_discovered_together_and_beside_static_targets(tmp_path: Path) -> None:
    cassandra = copy_fixture("cassandra-4.1.yaml", tmp_path)
    kafka = copy_fixture("kafka-server.properties", tmp_path)
    head = HEAD + "targets:\n  - address: 127.0.0.1:443\n"
    loaded = config.load(write_config(tmp_path, f"  cassandra: {cassandra}\n  kafka: {kafka}\n", head=head))
    assert [t.name for t in loaded.targets] == [
        "127.0.0.1:443",
        "cassandra/native",
        "cassandra/internode",
        "kafka/ssl",
        "kafka/internal",
    ]


def test_a_discovered_name_taken_by_a_static_target_is_a_located_error(tmp_path: Path) -> None:
    source = copy_fixture("cassandra-4.1.yaml", tmp_path)
    head = "targets:\n  - name: cassandra/native\n    address: 127.0.0.1:9042\n"
    path = write_config(tmp_path, f"  cassandra: {source}\n", head=head)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    # Located at the product's entry under discover:
    assert messages(caught) == [f"{path}:5: discover: a discovered target is named 'cassandra/native', like another"]


# --------------------------------------------------------------------------------------------------
# Errors: located, collected, reported like our own config's
# --------------------------------------------------------------------------------------------------

BAD_CASSANDRA = FIXTURES / "cassandra-bad.yaml"
# Every mistake is reported, also one in a section that another mistake keeps from being used.
BAD_CASSANDRA_MESSAGES = [
    f"{BAD_CASSANDRA}:2: storage_port: expected a port from 1 to 65535, got 70000",
    f"{BAD_CASSANDRA}:4: server_encryption_options.internode_encryption: expected one of none, all, dc, rack, "
    "got 'everything'",
    f"{BAD_CASSANDRA}:6: client_encryption_options.enabled: expected bool, got 'yes-please'",
]
BAD_KAFKA = FIXTURES / "kafka-bad.properties"
BAD_KAFKA_MESSAGES = [
    f"{BAD_KAFKA}:2: listeners: expected NAME://host:port, got 'SSL://localhost'",
    f"{BAD_KAFKA}:2: listeners: SSL2 has no entry in listener.security.protocol.map",
    f"{BAD_KAFKA}:5: ssl.keystore.type: expected one of JKS, PKCS12, PEM, JCEKS, got 'BKS'",
]


@pytest.mark.parametrize(
    ("product", "source", "expected"),
    [("cassandra", BAD_CASSANDRA, BAD_CASSANDRA_MESSAGES), ("kafka", BAD_KAFKA, BAD_KAFKA_MESSAGES)],
    ids=["cassandra-bad", "kafka-bad"],
)
def test_bad_fixture_gives_exactly_its_located_messages(
    tmp_path: Path, product: str, source: Path, expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(write_config(tmp_path, f"  {product}: {source}\n"))
    # Sorted: the product reports in the order it checks (cassandra: line 6 before line 4), not by line.
    assert sorted(messages(caught)) == sorted(expected)


@pytest.mark.parametrize(
    ("product", "source", "expected"),
    [("cassandra", BAD_CASSANDRA, BAD_CASSANDRA_MESSAGES), ("kafka", BAD_KAFKA, BAD_KAFKA_MESSAGES)],
    ids=["cassandra-bad", "kafka-bad"],
)
def test_check_config_exits_2_and_prints_each_discovery_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], product: str, source: Path, expected: list[str]
) -> None:
    assert main(["check-config", str(write_config(tmp_path, f"  {product}: {source}\n"))]) == 2
    captured = capsys.readouterr()
    assert sorted(captured.err.splitlines()) == sorted(expected)
    assert captured.out == ""


def test_check_config_counts_discovered_targets_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, f"  cassandra: {copy_fixture('cassandra-5.0.yaml', tmp_path)}\n")
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok, 2 targets, 5 file entries, output {config.DEFAULT_OUTPUT}\n"


def test_our_errors_and_the_products_errors_are_reported_together(tmp_path: Path) -> None:
    path = write_config(tmp_path, f"  cassandra: {BAD_CASSANDRA}\n", head="interval: never\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert messages(caught)[0] == f"{path}:1: interval: expected a duration like 10s, 1m30s or 500ms, got str 'never'"
    assert sorted(messages(caught)[1:]) == sorted(BAD_CASSANDRA_MESSAGES)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "server_encryption_options:\n  internode_encryption: all\n  keystore: [unclosed\n",
            ":4: invalid YAML: expected ',' or ']', but got '<stream end>'",
            id="invalid-yaml",
        ),
        pytest.param(
            "- listen_address: 10.0.0.1\n- rpc_address: 10.0.0.1\n",
            ": expected cassandra.yaml to be a mapping",
            id="list",
        ),
        pytest.param("", ": expected cassandra.yaml to be a mapping", id="empty"),
        pytest.param(
            "native_transport_port: 0\nclient_encryption_options:\n  enabled: true\n",
            ":1: native_transport_port: expected a port from 1 to 65535, got 0",
            id="port-0",
        ),
        pytest.param(
            "client_encryption_options:\n  enabled: true\n  keystore: /k.bks\n  store_type: BKS\n",
            ":4: client_encryption_options.store_type: expected one of JKS, JCEKS, PKCS12, PEM, got 'BKS'",
            id="store-type",
        ),
    ],
)
def test_a_broken_cassandra_yaml_is_a_located_error(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, "cassandra", text)
    assert messages(caught) == [f"{tmp_path / 'cassandra.yaml'}{expected}"]


def test_a_cassandra_yaml_that_is_not_utf8_is_a_read_error(tmp_path: Path) -> None:
    path = tmp_path / "cassandra.yaml"
    path.write_bytes(b"cluster_name: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        config.load(write_config(tmp_path, f"  cassandra: {path}\n"))
    assert messages(caught) == [
        f"{path}: cannot read cassandra.yaml: 'utf-8' codec can't decode byte 0xe9 in position 17: "
        "invalid continuation byte"
    ]


@pytest.mark.parametrize(
    ("discover", "expected"),
    [
        pytest.param(
            "  cassandra: missing/cassandra.yaml\n",
            "2: discover.cassandra: expected a readable file, got '{dir}/missing/cassandra.yaml': "
            "No such file or directory",
            id="missing-file",
        ),
        pytest.param(
            "  cassandra: .\n",
            "2: discover.cassandra: expected a regular file, got '{dir}'",
            id="directory",
        ),
        pytest.param(
            "  mongodb: /etc/mongod.conf\n",
            "2: discover.mongodb: unknown product; expected one of cassandra, kafka",
            id="unknown-product",
        ),
        pytest.param(
            "  cassandra: {address: 10.0.0.1}\n",
            "2: discover.cassandra: missing required key 'path' (of cassandra's config file)",
            id="no-path",
        ),
        pytest.param(
            "  cassandra: {path: c.yaml, adress: 10.0.0.1}\n",
            "2: discover.cassandra.adress: unknown key; expected one of address, labels, path",
            id="unknown-key",
        ),
    ],
)
def test_a_bad_discover_entry_is_located_in_our_config(tmp_path: Path, discover: str, expected: str) -> None:
    (tmp_path / "c.yaml").write_text("cluster_name: x\n")
    path = write_config(tmp_path, discover, head="")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert messages(caught) == [f"{path}:{expected.format(dir=tmp_path)}"]


def test_an_unreadable_path_key_is_reported_once(tmp_path: Path) -> None:
    # Product disagrees: `{path: missing.yaml}` reports the unreadable path AND "missing required key 'path'",
    # though the key is there. Our targets avoid exactly this (config._target checks whether `address` was given).
    path = write_config(tmp_path, "  cassandra: {path: missing.yaml}\n", head="")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert messages(caught) == [
        f"{path}:2: discover.cassandra.path: expected a readable file, got '{tmp_path}/missing.yaml': "
        "No such file or directory"
    ]


# --------------------------------------------------------------------------------------------------
# Re-discovery: every load reads the product's file again (what SIGHUP does)
# --------------------------------------------------------------------------------------------------


def test_loading_again_rediscovers_a_changed_cassandra_yaml(tmp_path: Path) -> None:
    source = copy_fixture("cassandra-4.0.yaml", tmp_path)
    path = write_config(tmp_path, f"  cassandra: {source}\n")
    first = config.load(path)
    changed = (
        source.read_text()
        .replace("10.0.0.21", "10.0.0.22")
        .replace("native_transport_port: 9142", "native_transport_port: 9242")
        .replace("enable_legacy_ssl_storage_port: false", "enable_legacy_ssl_storage_port: true")
    )
    source.write_text(changed)
    second = config.load(path)
    assert endpoints(first) == [
        ("cassandra/native", "10.0.0.21", 9142, "10.0.0.21"),
        ("cassandra/internode", "10.0.0.21", 7000, "10.0.0.21"),
    ]
    assert endpoints(second) == [
        ("cassandra/native", "10.0.0.22", 9242, "10.0.0.22"),
        ("cassandra/internode", "10.0.0.22", 7000, "10.0.0.22"),
        ("cassandra/internode-legacy", "10.0.0.22", 7001, "10.0.0.22"),
    ]


def test_daemon_reload_follows_the_product_file_and_keeps_the_old_targets_when_it_breaks(tmp_path: Path) -> None:
    source = copy_fixture("cassandra-4.1.yaml", tmp_path)
    path = write_config(tmp_path, f"  cassandra: {source}\n", head=f"output: {tmp_path / 'out.prom'}\n")
    daemon = Daemon(config.load(path))
    source.write_text(source.read_text().replace("internode_encryption: dc", "internode_encryption: none"))
    assert daemon.reload(str(path))
    assert [t.name for t in daemon.config.targets] == ["cassandra/native"]
    before = daemon.config
    source.write_text(source.read_text().replace("internode_encryption: none", "internode_encryption: sometimes"))
    assert not daemon.reload(str(path))
    assert daemon.config is before and not daemon.config_ok


# --------------------------------------------------------------------------------------------------
# Kafka
# --------------------------------------------------------------------------------------------------


def test_kafka_server_properties_ssl_and_internal_listeners(tmp_path: Path) -> None:
    loaded = load_fixture(tmp_path, "kafka", "kafka-server.properties")
    keystore = store(tmp_path, "kafka.keystore.p12", "pkcs12", "changeit")
    truststore = store(tmp_path, "kafka.truststore.p12", "pkcs12", "changeit")
    internal = store(tmp_path, "internal.keystore.p12", "pkcs12", "changeit")
    assert loaded.targets == (
        discovered(
            "kafka/ssl",
            "kafka1.example.internal",
            9093,
            verify_hostname=True,  # advertised: clients check this name
            truststore=truststore,
            keystore=keystore,
            client_keystore=keystore,  # ssl.client.auth=required
        ),
        # INTERNAL overrides the keystore only; its type and truststore fall back to the generic ssl.* keys
        discovered(
            "kafka/internal",
            "127.0.0.1",
            9094,
            verify_hostname=True,
            truststore=truststore,
            keystore=internal,
            client_keystore=internal,
        ),
    )  # PLAINTEXT (9092) and CONTROLLER (mapped, not listened on) give nothing
    assert loaded.files == (keystore, truststore, internal)


KAFKA_STORES = "ssl.keystore.location=/k/ks.jks\nssl.keystore.password=pw\nssl.truststore.location=/k/ts.jks\n"


def test_kafka_empty_host_is_this_hosts_name_and_unadvertised_is_not_name_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "broker7.example.internal")
    text = "listeners=SSL://:9093,OTHER://0.0.0.0:9095\nadvertised.listeners=OTHER://kafka7.example.com:9095\n"
    text += "listener.security.protocol.map=SSL:SSL,OTHER:SASL_SSL\nssl.client.auth=requested\n" + KAFKA_STORES
    loaded = load_text(tmp_path, "kafka", text)
    assert [(t.name, t.host, t.port, t.server_name, t.verify_hostname) for t in loaded.targets] == [
        ("kafka/ssl", "broker7.example.internal", 9093, "broker7.example.internal", False),  # not advertised
        ("kafka/other", "127.0.0.1", 9095, "kafka7.example.com", True),  # SASL_SSL is TLS from the first byte
    ]
    assert [t.client_keystore for t in loaded.targets] == [None, None]  # requested, not required
    assert loaded.targets[0].keystore == StoreSpec(path="/k/ks.jks", format="jks", password="pw")
    assert loaded.targets[0].truststore == StoreSpec(path="/k/ts.jks", format="jks")


def test_kafka_wildcard_listener_is_probed_on_loopback_and_checked_against_the_advertised_name(tmp_path: Path) -> None:
    text = "listeners=SSL://0.0.0.0:9093,V6://[::]:9094\nlistener.security.protocol.map=SSL:SSL,V6:SSL\n"
    text += "advertised.listeners=SSL://kafka7.example.com:9093,V6://[2001:db8::7]:9094\n" + KAFKA_STORES
    loaded = load_text(tmp_path, "kafka", text)
    assert [(t.name, t.host, t.port, t.server_name, t.verify_hostname) for t in loaded.targets] == [
        ("kafka/ssl", "127.0.0.1", 9093, "kafka7.example.com", True),
        ("kafka/v6", "::1", 9094, "2001:db8::7", True),
    ]


def test_kafka_address_override_and_labels(tmp_path: Path) -> None:
    text = "listeners=SSL://kafka7.example.com:9093\nadvertised.listeners=SSL://kafka7.example.com:9093\n"
    loaded = load_text(
        tmp_path, "kafka", text + KAFKA_STORES, options="    address: 10.5.5.5\n    labels: {role: mq}\n"
    )
    assert endpoints(loaded) == [("kafka/ssl", "10.5.5.5", 9093, "kafka7.example.com")]
    assert loaded.targets[0].labels == (("env", "prod"), ("role", "mq"))


def test_kafka_listener_advertised_by_default_is_name_checked(tmp_path: Path) -> None:
    # Product disagrees. Kafka's advertised.listeners doc: "If this is not set, the value for `listeners`
    # will be used." So SSL://kafka7.example.com:9093 is advertised as kafka7.example.com and clients
    # (ssl.endpoint.identification.algorithm=https, the default) check that name; the product sees no
    # advertised.listeners key and sets verify_hostname false.
    loaded = load_text(tmp_path, "kafka", "listeners=SSL://kafka7.example.com:9093\n" + KAFKA_STORES)
    assert [(t.host, t.server_name, t.verify_hostname) for t in loaded.targets] == [
        ("kafka7.example.com", "kafka7.example.com", True)
    ]


def test_kafka_store_type_error_is_located_on_its_line(tmp_path: Path) -> None:
    text = "listeners=SSL://:9093\nssl.keystore.location=/k/ks.bks\nssl.keystore.type=BKS\n"
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, "kafka", text)
    assert messages(caught) == [
        f"{tmp_path / 'server.properties'}:3: ssl.keystore.type: expected one of JKS, PKCS12, PEM, JCEKS, got 'BKS'"
    ]


def test_parse_properties_gives_the_first_line_of_a_continued_entry() -> None:
    props = parse_properties((FIXTURES / "kafka-server.properties").read_text(encoding="latin-1"))
    assert props["listeners"] == ("PLAINTEXT://:9092,SSL://kafka1.example.internal:9093,INTERNAL://127.0.0.1:9094", 14)
    assert props["num.network.threads"] == ("3", 21)
    assert props["log.dirs"] == ("/var/lib/kafka/data", 22)
    assert "!" not in "".join(props) and "#" not in "".join(props)


# --------------------------------------------------------------------------------------------------
# parse_properties against the real java.util.Properties.load(InputStream)
# --------------------------------------------------------------------------------------------------

DUMP_JAVA = r"""
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.TreeSet;

public class Dump {
    // A JSON string: every char outside printable ASCII, and the quote and backslash, as a UTF-16 escape.
    static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c < 0x20 || c > 0x7e || c == '"' || c == '\\') out.append(String.format("\\u%04x", (int) c));
            else out.append(c);
        }
        return out.append('"').toString();
    }

    public static void main(String[] args) throws Exception {
        List<String> results = new ArrayList<>();
        for (String arg : args) {
            Properties props = new Properties();
            try (InputStream in = Files.newInputStream(Path.of(arg))) {
                props.load(in);
            } catch (IllegalArgumentException e) {
                results.add("{\"error\": " + quote(String.valueOf(e.getMessage())) + "}");
                continue;
            }
            List<String> pairs = new ArrayList<>();
            for (String key : new TreeSet<>(props.stringPropertyNames())) {
                pairs.add(quote(key) + ": " + quote(props.getProperty(key)));
            }
            results.add("{\"properties\": {" + String.join(", ", pairs) + "}}");
        }
        System.out.println("[" + String.join(",\n", results) + "]");
    }
}
"""

# Raw file bytes (Properties.load(InputStream) reads ISO-8859-1, like kafka.discover).
PROPERTIES_CASES: dict[str, bytes] = {
    "equals": b"key=value\n",
    "colon": b"key:value\n",
    "space-separator": b"key value\n",
    "tab-separator": b"key\tvalue\n",
    "spaces-around-equals": b"key  =  value\n",
    "tabs-around-colon": b"key\t:\tvalue\n",
    "second-separator-is-value": b"key = = value\n",
    "colon-after-space-key": b"key :value:more\n",
    "key-only": b"key\n",
    "key-trailing-spaces": b"key   \n",
    "key-equals-nothing": b"key=\n",
    "empty-key": b"=value\n",
    "escaped-equals-in-key": b"a\\=b=c\n",
    "escaped-colon-in-key": b"a\\:b:c\n",
    "escaped-space-in-key": b"a\\ b value\n",
    "escaped-hash-key": b"\\#k=v\n",
    "hash-inside-key": b"a#b=c\n",
    "unicode-escapes": b"key=\\u0041\\u00e9\\u20AC\n",
    "unicode-escape-in-key": b"\\u0041b=c\n",
    "char-escapes": b"key=a\\tb\\nc\\rd\\fe\n",
    "unknown-escapes": b'key=\\q\\z\\"\n',
    "one-trailing-backslash": b"key=a\\\nb\n",
    "two-trailing-backslashes": b"key=a\\\\\nb=c\n",
    "three-trailing-backslashes": b"key=a\\\\\\\n  b\n",
    "four-trailing-backslashes": b"key=a\\\\\\\\\nb=c\n",
    "continuation-leading-whitespace": b"key=a,\\\n    b,\\\n\t\tc\n",
    "continuation-then-blank-line": b"a=b\\\n\nc=d\n",
    "lone-backslash-line": b"\\\nkey=value\n",
    "continued-key": b"ke\\\n  y=value\n",
    "comments": b"# hash\n! bang\n   # indented\n\t! indented\nkey=v\n",
    "comment-ending-in-backslash": b"# comment \\\nkey=v\n",
    "comment-text-in-continuation": b"key=a\\\n  # not a comment\n",
    "bang-text-in-continuation": b"key=a\\\n  ! not a comment\n",
    "hash-in-value": b"key=a#b !c\n",
    "crlf": b"a=1\r\nb=2\\\r\n   3\r\n\r\nc=4\r\n",
    "cr-only": b"a=1\rb=2\\\r  3\r",
    "trailing-whitespace-kept": b"key=value  \t\n",
    "leading-whitespace-line": b"   key=value\n",
    "whitespace-only-line": b"   \t\nkey=value\n",
    "duplicate-key-last-wins": b"k=1\nk=2\n",
    "latin1-byte": b"key=caf\xe9\n",
    "no-final-newline": b"a=1\nb=2",
    "even-backslashes-at-eof": b"a=b\\\\",
    # The product disagrees on the cases below: a trailing backslash at end of file is kept (Java drops it);
    # str.splitlines, str.lstrip and regex \s treat \f \v \x85 \xa0 as line breaks or whitespace (Java: only
    # \n \r end a line, only space \t \f are whitespace); a malformed \u escape is accepted (Java throws);
    # an escaped surrogate pair stays two lone surrogates (Java: one character).
    "odd-backslash-at-eof": b"a=b\\",
    "odd-backslash-last-line": b"a=b\\\n",
    "form-feed-separator": b"key\x0cvalue\n",
    "form-feed-in-value": b"key=a\x0cb\n",
    "vertical-tab-in-value": b"key=a\x0bb\n",
    "utf8-A-ring-in-comment": "# \u00c5ngstr\u00f6m\nkey=value\n".encode(),
    "utf8-A-ring-in-value": "name=\u00c5sa\n".encode(),
    "nbsp-in-key": b"key\xa0x=value\n",
    "nbsp-leading": b"\xa0key=value\n",
    "malformed-unicode-escape": b"key=\\uZZZZ\n",
    "surrogate-pair-escape": b"key=\\ud83d\\ude00\n",
}


class JavaOracle(NamedTuple):
    directory: Path  # holds <case>.properties
    results: dict[str, dict[str, Any]]  # case -> {"properties": {...}} or {"error": message}


@pytest.fixture(scope="module")
def java_properties(tmp_path_factory: pytest.TempPathFactory) -> JavaOracle:
    """What java.util.Properties.load makes of each case, from one `java Dump.java` run."""
    java = shutil.which("java")
    if java is None:
        pytest.skip("java is not installed")
    directory = tmp_path_factory.mktemp("properties")
    (directory / "Dump.java").write_text(DUMP_JAVA)
    files = []
    for name, data in PROPERTIES_CASES.items():
        (directory / f"{name}.properties").write_bytes(data)
        files.append(str(directory / f"{name}.properties"))
    run = subprocess.run(
        [java, str(directory / "Dump.java"), *files], capture_output=True, text=True, timeout=120, check=True
    )
    results = json.loads(run.stdout)
    return JavaOracle(directory, dict(zip(PROPERTIES_CASES, results, strict=True)))


def test_the_java_oracle_reads_what_the_properties_javadoc_says(java_properties: JavaOracle) -> None:
    # Guards the oracle itself (a broken Dump.java would make every comparison meaningless).
    results = java_properties.results
    assert results["equals"] == {"properties": {"key": "value"}}
    assert results["escaped-equals-in-key"] == {"properties": {"a=b": "c"}}
    assert results["continuation-leading-whitespace"] == {"properties": {"key": "a,b,c"}}
    assert results["utf8-A-ring-in-value"] == {"properties": {"name": "\u00c3\u0085sa"}}  # ISO-8859-1, no split
    assert results["malformed-unicode-escape"] == {"error": "Malformed \\uxxxx encoding."}


@pytest.mark.parametrize("case", list(PROPERTIES_CASES))
def test_parse_properties_agrees_with_java_properties_load(case: str, java_properties: JavaOracle) -> None:
    text = (java_properties.directory / f"{case}.properties").read_text(encoding="latin-1")  # as kafka.discover does
    expected = java_properties.results[case]
    if "error" in expected:  # Java refuses the file; so must we, rather than invent a value
        with pytest.raises((ValueError, ConfigError)):
            parse_properties(text)
    else:
        assert {key: value for key, (value, _line) in parse_properties(text).items()} == expected["properties"]


def test_our_ca_file_applies_where_the_product_names_no_truststore_and_yields_where_it_does(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("placeholder: only its path matters here\n")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cassandra.yaml").write_text(
        "rpc_address: 10.0.0.1\nlisten_address: 10.0.0.1\n"
        "client_encryption_options:\n  enabled: true\n"  # names no truststore, and server options none either
        "server_encryption_options:\n  internode_encryption: all\n  truststore: /etc/cassandra/ts.jks\n"
    )
    head = f"defaults:\n  ca_file: {ca}\n"
    loaded = config.load(write_config(tmp_path, f"  cassandra: {tmp_path / 'c' / 'cassandra.yaml'}\n", head=head))
    native, internode = loaded.targets
    # The client side names no truststore, so the native target takes the server side's, not our ca_file.
    assert (native.ca_file, native.truststore) == (None, StoreSpec("/etc/cassandra/ts.jks", format="jks"))
    assert (internode.ca_file, internode.truststore) == (None, StoreSpec("/etc/cassandra/ts.jks", format="jks"))

    (tmp_path / "c" / "cassandra.yaml").write_text(
        "rpc_address: 10.0.0.1\nclient_encryption_options:\n  enabled: true\n"
    )
    (only,) = config.load(
        write_config(tmp_path, f"  cassandra: {tmp_path / 'c' / 'cassandra.yaml'}\n", head=head)
    ).targets
    assert (only.ca_file, only.truststore) == (str(ca), None)
