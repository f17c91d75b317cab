"""OpenSSL cipher names to IANA names.

blackbox_exporter labels `probe_tls_cipher_info` with the IANA name (Go's tls.CipherSuiteName).
OpenSSL names TLS 1.3 suites the IANA way already; for older versions the names differ, and
pyOpenSSL exposes only OpenSSL's, so this table translates. Unknown names pass through unchanged.
"""

from __future__ import annotations

_KX = {
    "ECDHE-ECDSA": "TLS_ECDHE_ECDSA_WITH",
    "ECDHE-RSA": "TLS_ECDHE_RSA_WITH",
    "DHE-RSA": "TLS_DHE_RSA_WITH",
    "": "TLS_RSA_WITH",
}
_BULK = {
    "AES128-GCM-SHA256": "AES_128_GCM_SHA256",
    "AES256-GCM-SHA384": "AES_256_GCM_SHA384",
    "CHACHA20-POLY1305": "CHACHA20_POLY1305_SHA256",
    "AES128-SHA256": "AES_128_CBC_SHA256",
    "AES256-SHA384": "AES_256_CBC_SHA384",
    "AES256-SHA256": "AES_256_CBC_SHA256",
    "AES128-SHA": "AES_128_CBC_SHA",
    "AES256-SHA": "AES_256_CBC_SHA",
    "DES-CBC3-SHA": "3DES_EDE_CBC_SHA",
}

# Where the OpenSSL name is not simply "<kx>-<bulk>".
_SPECIAL = {
    "ECDHE-ECDSA-DES-CBC3-SHA": "TLS_ECDHE_ECDSA_WITH_3DES_EDE_CBC_SHA",
    "ECDHE-RSA-DES-CBC3-SHA": "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "EDH-RSA-DES-CBC3-SHA": "TLS_DHE_RSA_WITH_3DES_EDE_CBC_SHA",
}


def iana_name(openssl_name: str) -> str:
    """The IANA cipher-suite name for an OpenSSL cipher name, or the name itself if unknown."""
    if openssl_name.startswith("TLS_") or openssl_name in _SPECIAL:
        return _SPECIAL.get(openssl_name, openssl_name)
    for kx, prefix in _KX.items():
        bulk = openssl_name[len(kx) + 1 :] if kx else openssl_name
        if (not kx or openssl_name.startswith(kx + "-")) and bulk in _BULK:
            return f"{prefix}_{_BULK[bulk]}"
    return openssl_name
