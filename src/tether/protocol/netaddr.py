"""Whether an address stays on this machine: plain HTTP is allowed there without asking.

Shared by the server (which refuses to listen in plain HTTP on a network address
unless told ``--insecure``) and the agent (which refuses to register with a
plain-HTTP server off this machine unless told the same). Standard library only.
"""

from __future__ import annotations

import ipaddress
import urllib.parse


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard_host(host: str) -> bool:
    """An address that binds every interface (0.0.0.0, ::): no device can dial it."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host == ""


def plain_http_off_machine(url: str) -> bool:
    """True for an ``http://`` URL whose host is not this machine."""
    parts = urllib.parse.urlsplit(url)
    return parts.scheme == "http" and not is_loopback_host(parts.hostname or "")
