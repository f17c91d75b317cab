# Strategy: shared pytest fixtures only; helpers live in pki.py / servers.py
# and are imported by bare module name (pytest's default "prepend" import mode
# puts this directory on sys.path).  Keep each section short.
from __future__ import annotations

import pytest
from pki import Pki

# --------------------------------------------------------------------------
# PKI
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pki() -> Pki:
    """One root + intermediate CA for the whole run; ``pki.now`` is real time."""
    return Pki()
