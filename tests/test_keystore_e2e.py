# Strategy: the night this feature exists for, end to end. A cassandra.yaml written at test time
# names JKS stores made by the real keytool; real TLS servers on loopback stand in for the node's
# native and internode ports, serving the keystore's certificate (the internode one requires a
# client certificate, which the probe takes from the keystore). The real CLI runs `run --once`,
# then the keystore is renewed on disk while the "node" keeps serving the old certificate, and
# the served-versus-disk gauge must flip to 0; restarting the "node" on the new one brings it back.
from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from keystores import make_keystore
from oneshot import run_once
from pki import Issued, Pki
from prometheus_client.parser import text_string_to_metric_families
from servers import TlsServer

pytestmark = pytest.mark.skipif(shutil.which("keytool") is None, reason="keytool (a JRE) is not installed")

PASSWORD = "cassandra"
MATCH = "textfile_probe_served_cert_matches_file"


def _values(text: str, name: str) -> dict[str, float]:
    """target (or path) label -> value, for one metric name."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                out[sample.labels.get("target") or sample.labels["path"]] = sample.value
    return out


def _fingerprints(text: str, path: Path) -> set[tuple[str, str, str]]:
    """(alias, entry, fingerprint) of every certificate series of one file."""
    return {
        (s.labels["alias"], s.labels["entry"], s.labels["fingerprint_sha256"])
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "textfile_probe_file_cert_not_after_timestamp_seconds" and s.labels["path"] == str(path)
    }


def _fingerprint(issued: Issued) -> str:
    from cryptography.hazmat.primitives import hashes

    return issued.cert.fingerprint(hashes.SHA256()).hex()


CASSANDRA_YAML = """\
cluster_name: 'Test Cluster'
listen_address: 127.0.0.1
storage_port: {storage_port}
rpc_address: 127.0.0.1
native_transport_port: {native_port}
server_encryption_options:
  internode_encryption: all
  keystore: conf/keystore.jks
  keystore_password: {password}
  truststore: conf/truststore.jks
  truststore_password: {password}
  require_client_auth: true
  store_type: JKS
client_encryption_options:
  enabled: true
  optional: false
  keystore: conf/keystore.jks
  keystore_password: {password}
  truststore: conf/truststore.jks
  truststore_password: {password}
"""


@contextlib.contextmanager
def _node(pki: Pki, served: Issued) -> Iterator[tuple[TlsServer, TlsServer]]:
    """The node's two TLS ports, both serving `served`; internode requires a client certificate."""
    chain = pki.chain_for(served)
    with (
        TlsServer(chain, served.key) as native,
        TlsServer(chain, served.key, client_ca=[pki.root.cert, pki.intermediate.cert]) as internode,
    ):
        yield native, internode


def _run(home: Path, native: TlsServer, internode: TlsServer) -> str:
    conf = home / "conf"
    (conf / "cassandra.yaml").write_text(
        CASSANDRA_YAML.format(native_port=native.port, storage_port=internode.port, password=PASSWORD)
    )
    output = home / "out" / "tls.prom"
    config = {"output": str(output), "timeout": "3s", "discover": {"cassandra": str(conf / "cassandra.yaml")}}
    run_once(home, config)
    return output.read_text()


def test_renewed_keystore_not_yet_served_flips_the_gauge(pki: Pki, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (tmp_path / "out").mkdir()
    old = pki.leaf("node1", both_usages=True)
    new = pki.leaf("node1", both_usages=True)
    keystore, truststore = conf / "keystore.jks", conf / "truststore.jks"
    make_keystore(keystore, "JKS", password=PASSWORD, leaf=old, chain=pki.chain_for(old))
    make_keystore(truststore, "JKS", password=PASSWORD, trusted=[pki.root.cert])

    with _node(pki, old) as (native, internode):
        before = _run(tmp_path, native, internode)
        # The keystore is renewed on disk; the running node still serves the old certificate.
        make_keystore(keystore, "JKS", password=PASSWORD, leaf=new, chain=pki.chain_for(new))
        renewed = _run(tmp_path, native, internode)
        assert internode.handshakes >= 2  # both runs really completed mutual-TLS handshakes
    with _node(pki, new) as (native, internode):
        restarted = _run(tmp_path, native, internode)

    targets = {"cassandra/native": 1.0, "cassandra/internode": 1.0}
    # Verified against the JKS truststore, with the JKS keystore's key as client certificate.
    assert _values(before, "probe_success") == targets
    assert _values(before, MATCH) == targets
    assert _values(renewed, "probe_success") == targets
    assert _values(renewed, MATCH) == {"cassandra/native": 0.0, "cassandra/internode": 0.0}
    assert _values(restarted, MATCH) == targets

    assert _values(renewed, "textfile_probe_file_read_success") == {str(keystore): 1.0, str(truststore): 1.0}
    assert ("node", "private_key", _fingerprint(old)) in _fingerprints(before, keystore)
    assert ("node", "private_key", _fingerprint(new)) in _fingerprints(renewed, keystore)
    assert ("node", "private_key", _fingerprint(old)) not in _fingerprints(renewed, keystore)
    assert _fingerprints(renewed, truststore) == {("ca-0", "trusted_cert", _fingerprint(pki.root))}


def test_wrong_keystore_password_fails_setup_and_reports_the_file(pki: Pki, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (tmp_path / "out").mkdir()
    leaf = pki.leaf("node1", both_usages=True)
    make_keystore(conf / "keystore.jks", "JKS", password="another-password", leaf=leaf, chain=pki.chain_for(leaf))
    make_keystore(conf / "truststore.jks", "JKS", password=PASSWORD, trusted=[pki.root.cert])
    with _node(pki, leaf) as (native, internode):
        text = _run(tmp_path, native, internode)
    read = {
        (s.labels["path"], s.labels["reason"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "textfile_probe_file_read_success"
    }
    assert read == {(str(conf / "keystore.jks"), "bad_password"): 0.0, (str(conf / "truststore.jks"), "ok"): 1.0}
    failures = {
        s.labels["target"]: (s.labels["stage"], s.labels["reason"])
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "textfile_probe_failure_info"
    }
    # The native port needs no client certificate, so only internode fails: it cannot open its key.
    assert failures == {"cassandra/internode": ("setup", "bad_client_keystore")}
    assert _values(text, MATCH) == {}  # unknown, not 0: the keystore could not be read
