"""The command line: `probe` exit codes and formats, `demo` (the quickstart), `--version`."""

from __future__ import annotations

from pathlib import Path

import pytest
from pki import Pki, write_pem
from servers import ClosedPort, TlsServer

from textfile_probe import __version__
from textfile_probe.cli import main


def test_probe_healthy_endpoint_text_and_prom(pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leaf = pki.leaf()
    ca = write_pem(tmp_path / "ca.pem", pki.root)
    with TlsServer(pki.chain_for(leaf), leaf.key) as server:
        args = ["probe", server.address, "--server-name", "localhost", "--ca-file", str(ca)]
        assert main(args) == 0
        text = capsys.readouterr().out
        assert main([*args, "--format", "prom"]) == 0
        prom = capsys.readouterr().out
    assert "result:      OK\n" in text
    assert "chain sent by the server (2 certificates):" in text
    assert "textfile-probe Test Intermediate CA" in text
    assert f'probe_success{{target="{server.address}"}} 1.0\n' in prom


def test_probe_failure_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    with ClosedPort() as closed:
        assert main(["probe", closed.address, "--timeout", "2s"]) == 1
    assert "FAILED at connect: refused" in capsys.readouterr().out


def test_probe_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe", "127.0.0.1:1", "--timeout", "soon"]) == 2
    assert "--timeout: expected a duration like 10s" in capsys.readouterr().err
    assert main(["probe", "no-port-here"]) == 2
    assert main(["probe"]) == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"textfile-probe {__version__}"


def test_demo_runs_real_cycles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--cycles", "2", "--keep", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cycle 2: valid=ok, expired=expired, closed-port=refused" in out
    prom = (tmp_path / "textfile_probe.prom").read_text()
    assert 'probe_success{env="demo",target="valid"} 1.0' in prom
    assert 'textfile_probe_failure_info{env="demo",reason="expired",stage="verify",target="expired"} 1.0' in prom


def test_probe_file_shows_a_keystore_like_an_endpoint(
    pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    leaf = pki.leaf("db1")
    store = tmp_path / "node.p12"
    encryption = serialization.BestAvailableEncryption(b"changeit")
    store.write_bytes(pkcs12.serialize_key_and_certificates(b"node", leaf.key, leaf.cert, [pki.intermediate.cert],
                                                            encryption))  # fmt: skip
    secret = tmp_path / "pass"
    secret.write_text("changeit\n")
    assert main(["probe", "--file", str(store), "--password-file", str(secret)]) == 0
    text = capsys.readouterr().out
    assert "result:      OK\nformat:      pkcs12, 2 certificates\n" in text
    assert "entry:       alias 'node', private key\n  [0] CN=db1\n" in text
    assert "  [1] CN=textfile-probe Test Intermediate CA,O=textfile-probe tests\n" in text

    monkeypatch.setenv("TFP_PW", "wrong")
    assert main(["probe", "--file", str(store), "--password-env", "TFP_PW", "--format", "prom"]) == 1
    prom = capsys.readouterr().out
    assert f'textfile_probe_file_read_success{{format="pkcs12",path="{store}",reason="bad_password"}} 0.0\n' in prom


def test_probe_needs_an_address_or_a_file_not_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["probe"]) == 2
    assert main(["probe", "127.0.0.1:1", "--file", str(tmp_path / "x.pem")]) == 2
    assert capsys.readouterr().err.count("give either host:port or --file PATH") == 2
    assert main(["probe", "--file", str(tmp_path / "missing.pem")]) == 1
    assert "result:      FAILED: not_found" in capsys.readouterr().out
