"""Registering a device: one HTTPS (or HTTP) POST with the activation id and code.

Every failure becomes a ``RegistrationFailed`` with a message that says what
to do, because the person reading it is at a device with no other help.
"""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request
from typing import Any, Optional

from tether.agent.state import Identity
from tether.protocol.trust import verify_hint

TIMEOUT = 30.0


class RegistrationFailed(Exception):
    """``kind`` is one of: refused, unreachable, bad_response."""

    def __init__(self, kind: str, message: str, code: str = "") -> None:
        self.kind = kind
        self.code = code
        super().__init__(message)


def normalise_server_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"server URL must start with http:// or https://, got {url!r}")
    return url


def register(server_url: str, activation_id: str, activation_code: str,
             computer_name: Optional[str], replaces: Optional[Identity],
             context: Optional[ssl.SSLContext] = None) -> Identity:
    base = normalise_server_url(server_url)
    body: dict[str, Any] = {"activation_id": activation_id,
                            "activation_code": activation_code,
                            "computer_name": computer_name or socket.gethostname()}
    if replaces is not None:
        body["replaces"] = {"node_id": replaces.node_id, "credential": replaces.credential}
    url = base + "/api/v1/registrations"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT,  # noqa: S310
                                    context=context) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise _refusal(exc) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        hint = verify_hint(reason, "--ca ca.pem")
        raise RegistrationFailed(
            "unreachable", f"could not reach the tether server at {url}: {reason}{hint}"
        ) from None
    except ValueError:
        raise RegistrationFailed("bad_response", f"{url} did not answer with JSON; "
                                 "is that a tether server?") from None
    return Identity(answer["node_id"], answer["credential"], base)


def _refusal(exc: urllib.error.HTTPError) -> RegistrationFailed:
    if exc.code == 404:  # the registration route never answers 404: no tether there
        return RegistrationFailed("bad_response", "the server answered HTTP 404 (no "
                                  "registration endpoint there); is that a tether server?")
    try:
        body = json.loads(exc.read())
        code, message = str(body["error"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        return RegistrationFailed("bad_response",
                                  f"the server answered HTTP {exc.code} without an explanation")
    hints = {
        "invalid_activation": "check the activation id and code you were given",
        "activation_expired": "ask for a new activation (tether activation create)",
        "activation_revoked": "ask for a new activation (tether activation create)",
        "registration_limit_reached": "ask for a new activation or a higher --limit",
    }
    hint = hints.get(code)
    return RegistrationFailed("refused", f"{message}" + (f"; {hint}" if hint else ""), code)
