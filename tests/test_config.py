"""Config loading: every bad file maps to its exact message; good files to exact dataclasses."""

from __future__ import annotations

from pathlib import Path

import pytest

from textfile_probe import config
from textfile_probe.cli import main
from textfile_probe.config import Config, Target, TlsVersion
from textfile_probe.errors import ConfigError

BAD = Path(__file__).parent / "configs" / "bad"
SHIPPED = Path(__file__).parent.parent / "etc" / "textfile-probe" / "config.yml"

# One mistake per file, and the exact message it must produce (after "<file>:").
EXPECTED_ERRORS = {
    "bad_duration.yml": "1: interval: expected a duration like 10s, 1m30s or 500ms, got str 'soon'",
    "bad_ip_protocol.yml": "3: targets[0].ip_protocol: expected one of auto, ip4, ip6, got str 'ipv4'",
    "bad_label_name.yml": "3: defaults.labels.rack-id: expected a Prometheus label name "
    "([a-zA-Z_][a-zA-Z0-9_]*, not starting with __)",
    "bad_port.yml": "2: targets[0].address: expected host:port or [ipv6]:port with a port from 1 to 65535, "
    "got str 'db.example.com:70000'",
    "bad_tls_version.yml": "3: targets[0].min_version: expected one of TLS1.0, TLS1.1, TLS1.2, TLS1.3, got str 'SSLv3'",
    "bare_ipv6.yml": "2: targets[0].address: expected host:port or [ipv6]:port with a port from 1 to 65535, "
    "got str '::1:9142'",
    "client_key_without_cert.yml": "3: targets[0].client_key: client_key needs client_cert",
    "defaults_timeout.yml": "2: defaults.timeout: unknown key; expected one of ca_file, client_cert, client_key, "
    "client_keystore, ip_protocol, labels, max_version, min_version, truststore, verify, verify_hostname",
    "duplicate_key.yml": "4: targets[0].timeout: duplicate key",
    "duplicate_name.yml": "5: targets[2].name: duplicate target name '127.0.0.1:9142' (first at line 2)",
    "empty.yml": " the file is empty; expected a mapping with 'targets'",
    "invalid_yaml.yml": "3: invalid YAML: expected ',' or ']', but got '<stream end>'",
    "missing_address.yml": "2: targets[0]: missing required key 'address' (host:port)",
    "missing_ca_file.yml": "3: targets[0].ca_file: expected a readable file, got '/nonexistent/ca.pem': "
    "No such file or directory",
    "missing_port.yml": "2: targets[0].address: expected host:port or [ipv6]:port with a port from 1 to 65535, "
    "got str 'db.example.com'",
    "negative_timeout.yml": "1: timeout: expected a positive duration, got int -5",
    "output_not_prom.yml": "1: output: expected a file name ending in .prom (node_exporter reads only those), "
    "got '/tmp/metrics.txt'",
    "reserved_label.yml": "4: targets[0].labels.target: this label name is used by textfile-probe's own series; "
    "choose another",
    "reversed_versions.yml": "4: targets[0].max_version: expected max_version >= min_version",
    "targets_not_list.yml": "2: targets: expected a list of targets, got a mapping",
    "timeout_over_interval.yml": "4: targets[0].timeout: expected a timeout no longer than the interval (10s)",
    "unknown_target_key.yml": "3: targets[0].sever_name: unknown key; expected one of address, ca_file, client_cert, "
    "client_key, client_keystore, interval, ip_protocol, keystore, labels, max_version, min_version, name, "
    "server_name, starttls, timeout, truststore, verify, verify_hostname",
    "unknown_top_key.yml": "2: intervall: unknown key; expected one of concurrency, defaults, discover, files, "
    "interval, log_level, output, targets, timeout",
    "files_not_list.yml": "2: files: expected a list of files, globs or directories, got a mapping",
    "two_password_sources.yml": "4: files[0].password: give one password source, not password_env and password",
    "keystore_pattern.yml": "3: targets[0].keystore: expected one file here, not a pattern",
    "truststore_and_ca_file.yml": "4: targets[0].truststore: give truststore or ca_file, not both",
    "bad_store_format.yml": "3: files[0].format: expected one of auto, pem, der, pkcs12, jks, jceks, got str 'bks'",
    "unknown_product.yml": "2: discover.casandra: unknown product; expected one of cassandra, kafka",
    "discover_missing_file.yml": "2: discover.cassandra: expected a readable file, got '/nonexistent/cassandra.yaml': "
    "No such file or directory",
    "wrong_type_verify.yml": "3: targets[0].verify: expected true or false, got str 'maybe'",
    "zero_concurrency.yml": "1: concurrency: expected a whole number from 1 to 100000",
}


def test_every_bad_fixture_has_an_expected_message() -> None:
    assert sorted(p.name for p in BAD.glob("*.yml")) == sorted(EXPECTED_ERRORS)


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_bad_config_gives_exact_error(name: str) -> None:
    path = BAD / name
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert caught.value.messages == [f"{path}:{EXPECTED_ERRORS[name]}"]


@pytest.mark.parametrize("name", sorted(EXPECTED_ERRORS))
def test_check_config_exits_2_and_prints_the_error(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(BAD / name)]) == 2
    assert EXPECTED_ERRORS[name].split(": ", 1)[-1] in capsys.readouterr().err


def test_all_errors_are_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("interval: never\ntargets:\n  - address: nope\n  - address: 127.0.0.1:1\n    verify: 3\n")
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert [m.split(": ", 1)[0] for m in caught.value.messages] == [f"{path}:1", f"{path}:3", f"{path}:5"]


def test_shipped_example_config_is_valid() -> None:
    loaded = config.load(SHIPPED)
    assert [t.name for t in loaded.targets] == ["cassandra-native", "cassandra-internode"]
    assert main(["check-config", str(SHIPPED)]) == 0


def test_defaults_apply_and_targets_override(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("placeholder")
    path = tmp_path / "c.yml"
    path.write_text(
        "output: out/probe.prom\ninterval: 2m\ntimeout: 7s\nconcurrency: 8\n"
        "defaults:\n  ca_file: ca.pem\n  verify: false\n  labels: {cluster: prod, rack: 3}\n  min_version: TLS12\n"
        "targets:\n"
        "  - address: '[::1]:9142'\n"
        "  - name: internode\n    address: db1.example.com:7001\n    server_name: db1\n    verify: true\n"
        "    timeout: 500ms\n    interval: 1m30s\n    ip_protocol: ip6\n    labels: {kind: internode}\n"
    )
    loaded = config.load(path)
    common = {"ca_file": str(ca), "min_version": TlsVersion.TLS1_2}
    assert loaded == Config(
        path=str(path),
        output=str(tmp_path / "out" / "probe.prom"),
        interval=120.0,
        timeout=7.0,
        concurrency=8,
        targets=(
            Target(
                name="[::1]:9142", host="::1", port=9142, server_name="::1", verify=False, timeout=7.0,
                interval=120.0, labels=(("cluster", "prod"), ("rack", "3")), **common,
            ),
            Target(
                name="internode", host="db1.example.com", port=7001, server_name="db1", verify=True,
                timeout=0.5, interval=90.0, ip_protocol="ip6", labels=(("kind", "internode"),), **common,
            ),
        ),
    )  # fmt: skip


def test_config_objects_are_frozen() -> None:
    target = config.parse("targets: [{address: '127.0.0.1:1'}]").targets[0]
    with pytest.raises(AttributeError):
        target.port = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10.0), ("500ms", 0.5), ("1m30s", 90.0), ("2h", 7200.0), ("1.5s", 1.5), ("5m", 300.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "s", "1d", "m5", "5 s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        config.parse_duration(text)


def test_files_entries_resolve_paths_and_target_stores_share_their_passwords(tmp_path: Path) -> None:
    secret = tmp_path / "ks.pass"
    secret.write_text("changeit\n")
    path = tmp_path / "c.yml"
    path.write_text(
        "files:\n"
        "  - certs/*.pem\n"
        "  - {path: ks.jks, password_file: ks.pass, labels: {store: cassandra}}\n"
        "targets:\n"
        "  - {address: '127.0.0.1:9142', keystore: ks.jks, truststore: {path: ts.p12, format: pkcs12}}\n"
    )
    loaded = config.load(path)
    keystore = config.StoreSpec(str(tmp_path / "ks.jks"), password_file=str(secret), labels=(("store", "cassandra"),))
    truststore = config.StoreSpec(str(tmp_path / "ts.p12"), format="pkcs12")
    assert loaded.targets[0].keystore == keystore  # the bare path opens the way its files: entry says
    assert loaded.targets[0].truststore == truststore
    assert loaded.files == (config.StoreSpec(str(tmp_path / "certs/*.pem")), keystore, truststore)
    assert loaded.warnings == ()


def test_inline_passwords_and_unset_environment_variables_warn_with_their_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TFP_NOT_SET", raising=False)
    path = tmp_path / "c.yml"
    path.write_text("files:\n  - {path: a.jks, password: changeit}\n  - {path: b.jks, password_env: TFP_NOT_SET}\n")
    loaded = config.load(path)
    assert loaded.warnings == (
        f"{path}:2: files[0].password: a password written in the config file; prefer password_file or password_env",
        f"{path}:3: files[1].password_env: the environment variable TFP_NOT_SET is not set here",
    )
    assert "changeit" not in repr(loaded)  # never in a log line or a traceback
