# Strategy: one way for integration tests to run the real CLI once: write the config as YAML,
# run `python -m textfile_probe run --once` in a subprocess, and insist on exit 0.
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

RUN_TIMEOUT = 60.0


def run_once(base: Path, config: dict[str, Any]) -> None:
    """Write `config` to base/config.yml and run one real cycle; fail the test unless it exits 0."""
    config_path = base / "config.yml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "textfile_probe", "run", "--once", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
        cwd=base,
    )
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
