"""Command line: `run`, `check-config`, `probe`, `demo`. `main()` only returns an exit code.

Exit codes: 0 healthy/valid, 1 probe failed or output not written, 2 usage or config error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
from collections.abc import Sequence

import yaml

from . import __version__, logs, sdnotify
from . import config as config_mod
from .config import StoreSpec
from .errors import ConfigError
from .files import read_file
from .metrics import render
from .probe import probe
from .report import render_file_text, render_text
from .scheduler import Daemon, run_once
from .stores import FORMATS as STORE_FORMATS

DEFAULT_CONFIG = "/etc/textfile-probe/config.yml"
log = logging.getLogger("textfile_probe")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textfile-probe",
        description="Probe TLS endpoints; write node_exporter textfile metrics.",
    )
    parser.add_argument("--version", action="version", version=f"textfile-probe {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="probe on a schedule and write the .prom file")
    run.add_argument("--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    run.add_argument(
        "--once",
        action="store_true",
        help="run one cycle and exit (for cron); exit 1 if the file was not written",
    )
    run.add_argument("--log-level", choices=config_mod.LOG_LEVELS, help="override the config's log_level")

    check = commands.add_parser("check-config", help="validate a config file and exit 0 (valid) or 2")
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG)

    one = commands.add_parser("probe", help="probe one endpoint, or read one certificate file, and show its chain")
    one.add_argument("address", nargs="?", help="host:port or [ipv6]:port")
    one.add_argument("--file", help="instead of an endpoint: a PEM, DER, PKCS#12, JKS or JCEKS file")
    one.add_argument("--password-file", help="with --file: a file holding the store's password")
    one.add_argument("--password-env", help="with --file: an environment variable holding the password")
    one.add_argument("--store-format", choices=STORE_FORMATS, default="auto", help="with --file (default: sniffed)")
    one.add_argument("--server-name", help="SNI and the name verified (default: the host)")
    one.add_argument("--ca-file", help="PEM bundle of trusted CAs (default: the system trust store)")
    one.add_argument("--client-cert", help="PEM client certificate (mTLS)")
    one.add_argument("--client-key", help="PEM client key (default: inside --client-cert)")
    one.add_argument("--timeout", default="10s", help="e.g. 5s (default 10s)")
    one.add_argument("--no-verify", action="store_true", help="report but do not require verification")
    one.add_argument("--ip-protocol", choices=config_mod.IP_PROTOCOLS, default="auto")
    one.add_argument("--min-version", help="TLS1.0 .. TLS1.3")
    one.add_argument("--max-version", help="TLS1.0 .. TLS1.3")
    one.add_argument(
        "--starttls", choices=config_mod.STARTTLS_CHOICES, help="default: from the port (25 smtp, 389 ldap, ...)"
    )
    one.add_argument("--format", choices=("text", "prom"), default="text")

    demo = commands.add_parser("demo", help="run real probe cycles against local throwaway TLS endpoints")
    demo.add_argument("--cycles", type=int, default=2)
    demo.add_argument("--keep", metavar="DIR", help="write the demo's files into DIR and keep them")
    return parser


def _load(path: str) -> config_mod.Config | None:
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        for message in exc.messages:
            print(message, file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.config}: ok, {len(config.targets)} targets, {len(config.files)} file entries, output {config.output}")
    return 0


def _run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return 2
    logs.setup(args.log_level or config.log_level)
    for warning in config.warnings:
        log.warning("config warning", extra={"warning": warning})
    if args.once:  # a oneshot unit: systemd waits for the exit, there is nothing to notify
        return 0 if asyncio.run(run_once(config)) else 1
    notifier = sdnotify.Notifier.from_environment()
    log.info(
        "starting",
        extra={
            "version": __version__,
            "config": args.config,
            "targets": len(config.targets),
            "watchdog": notifier.watchdog_interval or "off",
        },
    )
    daemon = Daemon(config, log_level=args.log_level)
    return asyncio.run(daemon.run(args.config, notifier.send, notifier.watchdog_interval))


def _probe(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.address is None):
        print("probe: give either host:port or --file PATH", file=sys.stderr)
        return 2
    if args.file is not None:
        return _probe_file(args)
    options = {
        "address": args.address,
        "timeout": args.timeout,
        "verify": not args.no_verify,
        "ip_protocol": args.ip_protocol,
        "server_name": args.server_name,
        "ca_file": args.ca_file and os.path.abspath(args.ca_file),
        "client_cert": args.client_cert and os.path.abspath(args.client_cert),
        "client_key": args.client_key and os.path.abspath(args.client_key),
        "min_version": args.min_version,
        "max_version": args.max_version,
        "starttls": args.starttls,
    }
    entry = {key: value for key, value in options.items() if value is not None}
    text = yaml.safe_dump({"interval": "1h", "targets": [entry]})
    try:
        config = config_mod.parse(text, "<command line>")
    except ConfigError as exc:
        for message in exc.messages:
            flag = re.sub(r"^<command line>:\d+: targets\[0\]\.(\w+)", lambda m: "--" + m[1].replace("_", "-"), message)
            print(flag, file=sys.stderr)
        return 2
    result = asyncio.run(probe(config.targets[0]))
    if args.format == "prom":
        sys.stdout.write(render([result], None).decode())
    else:
        sys.stdout.write(render_text(result))
    return 0 if result.success else 1


def _probe_file(args: argparse.Namespace) -> int:
    spec = StoreSpec(
        path=os.path.abspath(args.file),
        format=args.store_format,
        password_file=args.password_file and os.path.abspath(args.password_file),
        password_env=args.password_env,
    )
    read = read_file(spec.path, spec)
    if args.format == "prom":
        sys.stdout.write(render([], None, files=[read]).decode())
    else:
        sys.stdout.write(render_file_text(read))
    return 0 if read.ok else 1


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    logs.setup("warning")
    return run_demo(args.cycles, args.keep)


_COMMANDS = {"run": _run, "check-config": _check, "probe": _probe, "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help/--version
        return int(exc.code or 0)
    return _COMMANDS[args.command](args)


def console() -> None:
    """The console-script entry point."""
    sys.exit(main())
