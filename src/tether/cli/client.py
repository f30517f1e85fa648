"""A small REST client on urllib: the CLI needs nothing outside the standard library."""

from __future__ import annotations

import contextlib
import functools
import http.client
import json
import os
import pwd
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tether.protocol.trust import pinned_context, verify_hint

# How the operator CLI is told a CA, for the hint after CERTIFICATE_VERIFY_FAILED.
CA_PIN = "'tether login --server URL --ca ca.pem' (or TETHER_CA=ca.pem)"


def config_file() -> Path:
    """Where ``tether login`` keeps the server and token: ``$XDG_CONFIG_HOME/tether/cli.json``.

    Read at each call, not at import. Per the XDG Base Directory spec an unset,
    empty or relative ``XDG_CONFIG_HOME`` is ignored (``~/.config``): an empty
    one once made ``tether login`` write the token to ``./tether/cli.json`` in
    whatever directory it ran in.
    """
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else _home() / ".config"
    return root / "tether" / "cli.json"


def _home() -> Path:
    """The user's home, absolute: an empty or relative ``HOME`` would put the token under
    the working directory (``HOME=relhome``) or at the root (``HOME=``), so it is taken
    from the password database instead, as a login shell would set it."""
    for home in (os.environ.get("HOME", ""), pwd.getpwuid(os.getuid()).pw_dir):
        if home and os.path.isabs(home):
            return Path(home)
    raise ValueError("no absolute home directory to keep the login in: set HOME or "
                     "XDG_CONFIG_HOME to an absolute path")


class ApiFailure(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


def load_login() -> tuple[str | None, str | None, bytes | None]:
    """Server, token and pinned CA (PEM): the environment's, else the saved login's.

    The token and the CA saved by ``tether login`` are used only with the server they
    were saved with (TETHER_SERVER naming another server inherits neither); TETHER_CA,
    read by ``Client``, overrides the CA.
    """
    server, token = os.environ.get("TETHER_SERVER"), os.environ.get("TETHER_TOKEN")
    try:
        saved = {} if server and token else json.loads(config_file().read_text())
    except (FileNotFoundError, ValueError):
        saved = {}
    server = server or saved.get("server")
    # The saved token and CA belong to the saved server: TETHER_SERVER naming another
    # one inherits neither (the token would go to a server it was never given to).
    same = server == saved.get("server")
    ca = saved.get("ca") if same else None
    token = token or (saved.get("token") if same else None)
    return server, token, ca.encode() if isinstance(ca, str) else None


def missing_login(server: str | None) -> str:
    """What to do when ``load_login`` found no server or no token, naming which.

    It once said "set TETHER_SERVER and TETHER_TOKEN" while TETHER_SERVER was set and
    only TETHER_TOKEN was empty (``$(cat data/admin-token)`` of a file not there).
    """
    if not server:
        return ("no server to talk to: set TETHER_SERVER and TETHER_TOKEN or run "
                "'tether login --server URL'")
    what = ("TETHER_TOKEN is empty" if os.environ.get("TETHER_TOKEN") == ""
            else "TETHER_TOKEN is not set")
    return (f"{what} (and no login is saved) for {server}: set it to an operator token "
            f"(a new server's first is in its DATA/admin-token) or run 'tether login "
            f"--server {server}'")


def save_login(server: str, token: str, ca: bytes | None = None) -> Path:
    """Write the login owner-only, through a new file of our own, then rename it in.

    The temporary file is made fresh (``O_EXCL``, 0600, a random name): a fixed name
    let a file planted there keep its own mode (0644, the token readable) or, as a
    symlink, send the token wherever it pointed. A CA given to ``login --ca`` is kept
    in the same file (its PEM, not its path): one rename replaces server, token and
    trust together, and moving or deleting the original later changes nothing.
    """
    path = config_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".cli.", suffix=".tmp", dir=path.parent)
    login: dict[str, str] = {"server": server, "token": token}
    if ca is not None:
        login["ca"] = ca.decode("ascii")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(login, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


class Client:
    def __init__(self, server: str, token: str, timeout: float = 90.0,
                 ca: bytes | None = None) -> None:
        if not server.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://, got {server!r}")
        if server.rstrip("/").endswith("/api/v1"):
            raise ValueError(f"the server URL {server!r} ends in /api/v1: give the server's "
                             "own address (http://HOST:PORT, as 'tether server' prints it); "
                             "tether adds /api/v1 itself")
        self.base = server.rstrip("/") + "/api/v1"
        self.token = token
        self.timeout = timeout
        self.saved_ca = ca

    @property
    def server(self) -> str:
        return self.base.removesuffix("/api/v1")

    def trusted_ca(self) -> tuple[bytes, str | None] | None:
        """The CA this client pins (PEM) and its file, if it has one (TETHER_CA; the
        copy saved by ``tether login --ca`` lives inside the login file, which is no
        file to hand to a device); None: the system's trust store.
        """
        env = os.environ.get("TETHER_CA")
        if env:
            return Path(env).read_bytes(), env
        return (self.saved_ca, None) if self.saved_ca is not None else None

    @functools.cached_property
    def context(self) -> ssl.SSLContext:
        """The TLS context, made on first use: loading the CA store costs about 90 ms,
        which a call to an http:// server (loopback, a proxy in front) need not pay.
        A server on tether's private CA (tether server --tls auto): TETHER_CA=ca.pem
        or ``tether login --ca ca.pem``."""
        env = os.environ.get("TETHER_CA")
        if env or self.saved_ca is None:
            return ssl.create_default_context(cafile=env or None)
        return pinned_context(self.saved_ca)

    def request(self, method: str, path: str, body: Any = None,
                query: dict[str, Any] | None = None, raw: bool = False) -> Any:
        # Ids in the path may be anything an operator typed: percent-encoded, a
        # control character or a space reaches the server as itself, not as a crash.
        url = self.base + urllib.parse.quote(path, safe="/", errors="surrogateescape")
        if query:
            pairs = [(k, x) for k, v in query.items() if v is not None
                     for x in (v if isinstance(v, list) else [v])]
            url += "?" + urllib.parse.urlencode(pairs)
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, method=method, headers={  # noqa: S310
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(  # noqa: S310
                    req, timeout=self.timeout,
                    context=self.context if url.startswith("https:") else None) as resp:
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            raise _failure(exc, self.server) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ApiFailure(0, "unreachable", f"could not reach the tether server at "
                             f"{self.base}: {reason}{verify_hint(reason, CA_PIN)}"
                             f"{connection_hint(self.server, reason)}") from None
        if raw:
            return payload
        try:
            return json.loads(payload)
        except ValueError:
            raise ApiFailure(0, "not_tether", f"{self.server} answered {url} with something "
                             f"that is not JSON{NOT_TETHER}") from None

    def get(self, path: str, **query: Any) -> Any:
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body=body if body is not None else {})


# Said when what answered does not speak tether's API.
NOT_TETHER = ("; is TETHER_SERVER (or the saved login) the tether server's own address "
              "and port, as 'tether server' prints it ('listening on URL')?")


def connection_hint(server: str, reason: object) -> str:
    """Advice for a connection that failed below HTTP, '' when there is none to give.

    ``https://`` to a plain-HTTP server fails in the handshake as WRONG_VERSION_NUMBER
    (the server answered the ClientHello with HTTP); a refused connection is nothing
    listening; a connection closed without an answer is a server that is not HTTP, or
    a TLS server spoken to over ``http://``.
    """
    if isinstance(reason, ssl.SSLError) and "WRONG_VERSION_NUMBER" in str(reason):
        plain = "http://" + server.removeprefix("https://")
        return f"; the server there does not speak TLS: try {plain}"
    if isinstance(reason, ConnectionRefusedError):
        return "; nothing listens there: is the tether server running, on this port?"
    if isinstance(reason, http.client.RemoteDisconnected | http.client.BadStatusLine):
        hint = "; what listens there did not answer HTTP"
        if server.startswith("http://"):
            hint += f" (if it serves TLS, use https://{server.removeprefix('http://')})"
        return hint + NOT_TETHER
    return ""


def _failure(exc: urllib.error.HTTPError, server: str) -> ApiFailure:
    try:
        body = json.loads(exc.read())
    except ValueError:
        body = {}
    if isinstance(body, dict) and "error" in body:
        message = str(body.get("message", ""))
        if body["error"] == "not_found" and exc.code == 404:
            # tether's answer for a path it has no route for; every path the CLI asks
            # for exists, so the URL's own path is wrong (a prefix, a typo).
            message += (f": {server} has no such API path; give the server's own "
                        "address, without a path (http://HOST:PORT)")
        return ApiFailure(exc.code, str(body["error"]), message)
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # request validation: name the fields
        msgs = [f"{'.'.join(str(x) for x in d.get('loc', [])[1:])}: {d.get('msg')}"
                for d in detail if isinstance(d, dict)]
        return ApiFailure(exc.code, "invalid_request", "; ".join(msgs))
    return ApiFailure(exc.code, "http_error", f"HTTP {exc.code} {exc.reason}, not the "
                      f"answer of a tether server{NOT_TETHER}")
