"""Trusting a server's certificate: one pinned-CA context, one fingerprint, one hint.

Shared by the agent (``register --ca``, ``configure --ca``) and the operator CLI
(``tether login --ca``, ``TETHER_CA``), so both refuse the same non-CA file with
the same words and both turn CERTIFICATE_VERIFY_FAILED into the same advice.
Standard library only.
"""

from __future__ import annotations

import hashlib
import ssl


def pinned_context(pem: bytes) -> ssl.SSLContext:
    """Trust exactly this CA (host names still checked); ValueError if it is not one."""
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ValueError("not a PEM CA certificate (no BEGIN CERTIFICATE block)")
    try:
        return ssl.create_default_context(cadata=pem.decode("ascii"))
    except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not a PEM CA certificate: {exc}") from None


def fingerprint(pem: bytes) -> str | None:
    """SHA-256 of the first certificate in ``pem``, as ``openssl x509 -fingerprint
    -sha256`` and the server's banner print it (AB:CD:...); None if there is none."""
    start = pem.find(b"-----BEGIN CERTIFICATE-----")
    end = pem.find(b"-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        return None
    block = pem[start:end + len(b"-----END CERTIFICATE-----")].decode("ascii", "replace")
    try:
        der = ssl.PEM_cert_to_DER_cert(block)
    except ValueError:
        return None
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def verify_hint(reason: object, pin: str) -> str:
    """Advice for a failed TLS connection, '' when there is none to give.

    ``pin`` is how this program is told a CA: ``--ca ca.pem`` for the agent,
    ``tether login --ca ca.pem`` (or TETHER_CA) for the operator CLI.
    """
    if not isinstance(reason, ssl.SSLCertVerificationError):
        return ""
    if "mismatch" in str(reason.verify_message):
        return ("; the certificate is not for this name or address: dial a name it has, "
                "or add this one (tether server --tls-name)")
    return f"; if the server uses its own CA (tether server --tls auto), pin it with {pin}"
