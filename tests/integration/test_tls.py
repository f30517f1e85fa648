"""TLS end to end: ``tether server --tls auto`` / ``--tls-cert``, agents pinning the CA.

Real processes only: ``python -m tether server`` on a loopback port serving
https, ``tether-agent register --ca`` / ``run`` / ``doctor`` and the ``tether``
CLI with ``TETHER_CA``. Certificates are read back with ``ssl`` and
``cryptography`` and compared with what the server prints and serves.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature

from harness import PYTHON, Agent, Server, clean_env, spawn
from tether.server.tls import ca_fingerprint

EXIT_USAGE, EXIT_UNREACHABLE = 2, 5
FINGERPRINT = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){31}$")


# -- helpers -----------------------------------------------------------------

class TlsServer(Server):
    """``harness.Server`` for an https server.

    ``Server.start`` waits for ``listening on http://``, which an https server
    never prints, so ``start`` is redone here; the CLI it runs trusts ``ca``
    (``TETHER_CA``), by default the server's own ``DATA/tls/ca.pem``.
    """

    def __init__(self, data_dir: Path, *extra: str, ca: Path | None = None) -> None:
        super().__init__(data_dir, extra=list(extra))
        self.ca = ca or data_dir / "tls" / "ca.pem"
        self.fingerprint = ""

    def start(self) -> TlsServer:
        argv = [PYTHON, "-m", "tether", "server", "--data-dir", str(self.data_dir),
                "--host", self.host, "--port", str(self.port),
                "--keepalive-interval", str(self.keepalive[0]),
                "--keepalive-timeout", str(self.keepalive[1]),
                "--registrations-per-address", "10000", *self.extra]
        self.proc, self.output = spawn(argv)
        self.url = self.output.wait_for(r"listening on (https?://\S+)", timeout=60).group(1)
        self.port = int(self.url.rsplit(":", 1)[1])
        self.token = (self.data_dir / "admin-token").read_text().strip()
        if "auto" in self.extra:
            self.fingerprint = self.output.wait_for(r"SHA-256 fingerprint (\S+)").group(1)
        return self

    def env(self) -> dict[str, str]:
        return clean_env(TETHER_SERVER=self.url, TETHER_TOKEN=self.token,
                         TETHER_CA=str(self.ca))


def sha256_fingerprint(pem: str) -> str:
    """The CA fingerprint computed without tether: SHA-256 of the DER, AA:BB:..."""
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).digest()
    return ":".join(f"{b:02X}" for b in digest)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def san(path: Path) -> set[str]:
    """The certificate's subject alternative names, as text."""
    ext = cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return ({str(n) for n in ext.get_values_for_type(x509.DNSName)}
            | {str(a) for a in ext.get_values_for_type(x509.IPAddress)})


def served_der(port: int, host: str = "127.0.0.1") -> bytes:
    """The certificate the server presents on the wire (not verified)."""
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((host, port), timeout=10))


def der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def register(server: Server, state_dir: Path, *extra: str,
             url: str | None = None) -> subprocess.CompletedProcess[str]:
    """``tether-agent register`` with a fresh activation and extra args (e.g. --ca)."""
    activation_id, code = server.activation()
    return Agent(server, state_dir).register_raw(activation_id, code, *extra, server_url=url)


def agent_register(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tether.agent", "register", *args],
                          capture_output=True, text=True, env=clean_env(), timeout=60)


def node_id_of(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    m = re.search(r"registered as (mi-[0-9a-f]{17})", result.stdout)
    assert m, result.stdout
    return m.group(1)


def server_usage(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``tether server`` with arguments that must be refused before it listens."""
    return subprocess.run([PYTHON, "-m", "tether", "server", "--data-dir", str(data_dir),
                           "--port", "0", *args],
                          capture_output=True, text=True, env=clean_env(), timeout=60)


def wait_listed_online(server: Server, node_id: str, timeout: float = 30) -> dict[str, Any]:
    """Poll ``tether nodes list`` (over https) until the node is listed Online."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {n["node_id"]: n for n in server.cli("nodes", "list")}
        row: dict[str, Any] = rows.get(node_id, {})
        if row.get("ping_status") == "Online":
            return row
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node_id} never listed Online: {rows.get(node_id)}")
        time.sleep(0.1)  # polling interval of a deadline-bound poll


# -- fixtures ----------------------------------------------------------------

@pytest.fixture(scope="module")
def auto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """One ``--tls auto`` server with the default names (127.0.0.1 among them)."""
    srv = TlsServer(tmp_path_factory.mktemp("auto"), "--tls", "auto").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def other_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """Another tether server with a private CA of its own."""
    srv = TlsServer(tmp_path_factory.mktemp("other"), "--tls", "auto").start()
    yield srv
    srv.stop()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers a test starts itself; stopped at the end even if the test fails."""
    started: list[Server] = []
    yield started
    for srv in started:
        srv.stop()


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


# -- 1. --tls auto: the private CA ---------------------------------------------

def test_auto_serves_https_and_prints_the_ca_fingerprint(auto_server: TlsServer) -> None:
    tls_dir = auto_server.data_dir / "tls"
    ca_pem = tls_dir / "ca.pem"
    assert auto_server.url.startswith("https://127.0.0.1:"), auto_server.url
    assert auto_server.output is not None
    auto_server.output.wait_for(r"TLS with tether's private CA " + re.escape(str(ca_pem)) + "$")

    assert FINGERPRINT.match(auto_server.fingerprint), auto_server.fingerprint
    assert auto_server.fingerprint == ca_fingerprint(ca_pem.read_bytes())
    assert auto_server.fingerprint == sha256_fingerprint(ca_pem.read_text())

    # Private keys owner-only, in an owner-only folder.
    assert mode(tls_dir / "ca-key.pem") == 0o600
    assert mode(tls_dir / "server-key.pem") == 0o600
    assert mode(tls_dir) == 0o700

    # The CA is a CA; the server certificate is signed by it and names what devices dial.
    ca, server = cert(ca_pem), cert(tls_dir / "server.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server.verify_directly_issued_by(ca)
    assert {"127.0.0.1", "localhost", socket.gethostname()} <= san(tls_dir / "server.pem")

    # What is on the wire is server.pem.
    assert served_der(auto_server.port) == der(tls_dir / "server.pem")

    # GET /agent/ca.pem, unauthenticated, gives the CA a device compares and pins.
    ctx = ssl.create_default_context(cafile=str(ca_pem))
    with urllib.request.urlopen(f"{auto_server.url}/agent/ca.pem", context=ctx,
                                timeout=30) as resp:
        assert resp.headers["content-type"].startswith("application/x-pem-file")
        assert sha256_fingerprint(resp.read().decode()) == auto_server.fingerprint


def test_restart_keeps_the_ca_and_remakes_the_server_cert_for_new_names(
        tmp_path: Path, servers: list[Server]) -> None:
    data = tmp_path / "data"
    tls_dir = data / "tls"
    first = TlsServer(data, "--tls", "auto", "--tls-name", "127.0.0.1")
    servers.append(first)
    first.start()
    ca_bytes = (tls_dir / "ca.pem").read_bytes()
    server_bytes = (tls_dir / "server.pem").read_bytes()
    ca_key = (tls_dir / "ca-key.pem").read_bytes()
    assert san(tls_dir / "server.pem") == {"127.0.0.1"}
    first.stop()

    # Same data dir, same names: the same CA and the same server certificate.
    again = TlsServer(data, "--tls", "auto", "--tls-name", "127.0.0.1")
    servers.append(again)
    again.start()
    assert again.fingerprint == first.fingerprint
    assert (tls_dir / "ca.pem").read_bytes() == ca_bytes
    assert (tls_dir / "ca-key.pem").read_bytes() == ca_key
    assert (tls_dir / "server.pem").read_bytes() == server_bytes
    again.stop()

    # New names: a new server certificate for them, from the same CA.
    renamed = TlsServer(data, "--tls", "auto", "--tls-name", "tether.test",
                        "--tls-name", "127.0.0.1")
    servers.append(renamed)
    renamed.start()
    assert renamed.fingerprint == first.fingerprint
    assert (tls_dir / "ca.pem").read_bytes() == ca_bytes
    assert (tls_dir / "server.pem").read_bytes() != server_bytes
    assert san(tls_dir / "server.pem") == {"tether.test", "127.0.0.1"}
    cert(tls_dir / "server.pem").verify_directly_issued_by(cert(tls_dir / "ca.pem"))
    assert mode(tls_dir / "server-key.pem") == 0o600
    assert served_der(renamed.port) == der(tls_dir / "server.pem")
    # Cross-check the SAN with the stdlib decoder too.
    decoded = ssl._ssl._test_decode_cert(str(tls_dir / "server.pem"))  # type: ignore[attr-defined]
    assert ("DNS", "tether.test") in decoded["subjectAltName"]


def verified_der(port: int, ca: Path, name: str = "127.0.0.1") -> bytes:
    """The server's certificate from a handshake that verifies it against ``ca`` only."""
    context = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname=name) as tls:
        peer = tls.getpeercert(binary_form=True)
    assert peer is not None
    return peer


def test_a_new_ca_gets_a_server_certificate_it_signed(tmp_path: Path,
                                                      servers: list[Server]) -> None:
    data = tmp_path / "data"
    tls_dir = data / "tls"
    first = TlsServer(data, "--tls", "auto", "--tls-name", "127.0.0.1")
    servers.append(first)
    first.start()
    old_ca = (tls_dir / "ca.pem").read_bytes()
    old_server = (tls_dir / "server.pem").read_bytes()
    first.stop()

    # The CA is lost (or removed on purpose); the server certificate it signed stays.
    (tls_dir / "ca.pem").unlink()
    (tls_dir / "ca-key.pem").unlink()
    again = TlsServer(data, "--tls", "auto", "--tls-name", "127.0.0.1")
    servers.append(again)
    again.start()

    new_ca = tls_dir / "ca.pem"
    assert new_ca.read_bytes() != old_ca
    assert FINGERPRINT.match(again.fingerprint), again.fingerprint
    assert again.fingerprint != first.fingerprint
    assert again.fingerprint == sha256_fingerprint(new_ca.read_text())
    assert mode(tls_dir / "ca-key.pem") == 0o600

    # server.pem is made again, by the new CA; the old one is not signed by it.
    assert (tls_dir / "server.pem").read_bytes() != old_server
    cert(tls_dir / "server.pem").verify_directly_issued_by(cert(new_ca))
    with pytest.raises(InvalidSignature):
        x509.load_pem_x509_certificate(old_server).verify_directly_issued_by(cert(new_ca))
    assert san(tls_dir / "server.pem") == {"127.0.0.1"}

    # On the wire: that certificate, and a handshake trusting only the new CA succeeds.
    assert served_der(again.port) == der(tls_dir / "server.pem")
    assert verified_der(again.port, new_ca) == der(tls_dir / "server.pem")
    # The CLI with TETHER_CA = the new ca.pem talks to it.
    assert again.ca == new_ca
    assert isinstance(again.cli("nodes", "list"), list)


# -- 2. agents pinning the CA, end to end --------------------------------------

def doctor(state: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """``tether-agent doctor --json``: its exit code and its checks by name."""
    result = subprocess.run([PYTHON, "-m", "tether.agent", "doctor", "--state-dir", str(state),
                             "--json"], capture_output=True, text=True, env=clean_env(),
                            timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, {c["check"]: c for c in json.loads(result.stdout)}


def test_agent_pins_the_ca_runs_commands_and_passes_the_doctor(
        auto_server: TlsServer, tmp_path: Path, agents: list[Agent]) -> None:
    state = tmp_path / "agent"
    ca_pem = auto_server.data_dir / "tls" / "ca.pem"
    result = register(auto_server, state, "--ca", str(ca_pem))
    node_id = node_id_of(result)

    # The pinned CA is kept in the state dir, owner-only, byte for byte.
    assert (state / "ca.pem").read_bytes() == ca_pem.read_bytes()
    assert mode(state / "ca.pem") == 0o600
    assert mode(state) == 0o700
    assert json.loads((state / "identity.json").read_text())["server_url"] == auto_server.url

    agent = Agent(auto_server, state)
    agent.node_id = node_id
    agents.append(agent)
    agent.start()
    row = wait_listed_online(auto_server, node_id)
    assert row["ping_status"] == "Online"

    ran = auto_server.cli("run", "--target", node_id, "--timeout", "30s",
                          "--delivery-timeout", "30s", "--", "echo", "hello")
    assert ran["status"] == "Success", ran
    [inv] = ran["invocations"]
    assert (inv["node_id"], inv["exit_code"], inv["stdout"]) == (node_id, 0, "hello\n"), inv

    code, checks = doctor(state)
    assert code == 0, checks
    assert checks["tls"]["ok"] is True and checks["tls"]["status"] == "pass", checks["tls"]
    assert "tether private CA" in checks["tls"]["detail"], checks["tls"]
    assert checks["auth"]["ok"] is True and checks["auth"]["status"] == "pass", checks["auth"]
    assert node_id in checks["auth"]["detail"], checks["auth"]


# -- 3. refusals ---------------------------------------------------------------

def assert_untrusted(result: subprocess.CompletedProcess[str], state: Path) -> None:
    assert result.returncode == EXIT_UNREACHABLE, (result.returncode, result.stderr)
    assert "certificate" in result.stderr, result.stderr
    assert "--ca" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not (state / "identity.json").exists()
    assert not (state / "ca.pem").exists()


def test_register_without_the_ca_is_refused(auto_server: TlsServer, tmp_path: Path) -> None:
    state = tmp_path / "agent"
    assert_untrusted(register(auto_server, state), state)


def test_register_with_another_servers_ca_is_refused(auto_server: TlsServer,
                                                     other_server: TlsServer,
                                                     tmp_path: Path) -> None:
    assert other_server.fingerprint != auto_server.fingerprint
    state = tmp_path / "agent"
    assert_untrusted(register(auto_server, state, "--ca", str(other_server.ca)), state)


def test_register_with_a_name_the_certificate_lacks_is_refused(
        tmp_path: Path, servers: list[Server]) -> None:
    srv = TlsServer(tmp_path / "data", "--tls", "auto", "--tls-name", "localhost")
    servers.append(srv)
    srv.start()
    assert san(srv.data_dir / "tls" / "server.pem") == {"localhost"}
    by_address = f"https://127.0.0.1:{srv.port}"
    by_name = f"https://localhost:{srv.port}"
    srv.url = by_name  # the CLI dials the name the certificate has

    state = tmp_path / "by-address"
    refused = register(srv, state, "--ca", str(srv.ca), url=by_address)
    assert refused.returncode == EXIT_UNREACHABLE, (refused.returncode, refused.stderr)
    assert "mismatch" in refused.stderr, refused.stderr
    assert "not for this name or address" in refused.stderr, refused.stderr
    assert "--tls-name" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr
    assert not (state / "identity.json").exists()

    state = tmp_path / "by-name"
    node_id = node_id_of(register(srv, state, "--ca", str(srv.ca), url=by_name))
    assert json.loads((state / "identity.json").read_text())["server_url"] == by_name
    assert (state / "ca.pem").read_bytes() == srv.ca.read_bytes()
    assert node_id in {n["node_id"] for n in srv.cli("nodes", "list")}


@pytest.mark.parametrize("trust", ["no-ca", "other-ca"])
def test_cli_refuses_an_unverified_server(auto_server: TlsServer, other_server: TlsServer,
                                          trust: str) -> None:
    extra = {"TETHER_CA": str(other_server.ca)} if trust == "other-ca" else {}
    result = subprocess.run([PYTHON, "-m", "tether.cli", "nodes", "list"],
                            capture_output=True, text=True, timeout=60,
                            env=clean_env(TETHER_SERVER=auto_server.url,
                                          TETHER_TOKEN=auto_server.token, **extra))
    assert result.returncode != 0, (result.stdout, result.stderr)
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""


# -- 4. --tls-cert / --tls-key: certificate files of one's own -------------------

def test_own_certificate_files_are_served_as_they_are(
        auto_server: TlsServer, tmp_path: Path, servers: list[Server],
        agents: list[Agent]) -> None:
    own = tmp_path / "own"
    own.mkdir()
    tls_dir = auto_server.data_dir / "tls"
    shutil.copy(tls_dir / "server.pem", own / "cert.pem")
    shutil.copy(tls_dir / "server-key.pem", own / "key.pem")
    data = tmp_path / "data"
    srv = TlsServer(data, "--tls-cert", str(own / "cert.pem"), "--tls-key",
                    str(own / "key.pem"), ca=auto_server.ca)
    servers.append(srv)
    srv.start()
    assert srv.url.startswith("https://127.0.0.1:"), srv.url

    # Exactly those bytes on the wire, verified against the CA that signed them.
    assert served_der(srv.port) == der(own / "cert.pem")
    assert verified_der(srv.port, auto_server.ca) == der(own / "cert.pem")
    # No private CA of its own: no fingerprint line (the banner ends with the first
    # steps, printed after it would be) and no DATA/tls.
    assert srv.output is not None
    srv.output.wait_for(r"^To register a first device:")
    banner = srv.output.text()
    assert "fingerprint" not in banner and "private CA" not in banner, banner
    assert not (data / "tls").exists()
    assert sorted(p.name for p in own.iterdir()) == ["cert.pem", "key.pem"]
    # Nor a CA to hand out.
    ctx = ssl.create_default_context(cafile=str(auto_server.ca))
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{srv.url}/agent/ca.pem", context=ctx, timeout=30)
    assert refused.value.code == 404
    assert json.loads(refused.value.read())["error"] == "no_private_ca"

    state = tmp_path / "agent"
    node_id = node_id_of(register(srv, state, "--ca", str(auto_server.ca)))
    assert (state / "ca.pem").read_bytes() == auto_server.ca.read_bytes()
    agent = Agent(srv, state)
    agent.node_id = node_id
    agents.append(agent)
    agent.start()
    wait_listed_online(srv, node_id)


def test_unreadable_certificate_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "cert.pem"
    bad.write_text("not a certificate\n")
    key = tmp_path / "key.pem"
    key.write_text("not a key\n")
    result = server_usage(tmp_path / "data", "--tls-cert", str(bad), "--tls-key", str(key))
    assert result.returncode != 0
    assert "cannot listen" not in result.stderr, result.stderr
    assert str(bad) in result.stderr, result.stderr


def test_mismatched_certificate_and_key_are_named(auto_server: TlsServer,
                                                   other_server: TlsServer,
                                                   tmp_path: Path) -> None:
    files = tmp_path / "files"
    files.mkdir()
    cert_file, key_file = files / "cert.pem", files / "key.pem"
    shutil.copy(auto_server.data_dir / "tls" / "server.pem", cert_file)
    shutil.copy(other_server.data_dir / "tls" / "server-key.pem", key_file)  # another run's
    data = tmp_path / "data"
    result = server_usage(data, "--tls-cert", str(cert_file), "--tls-key", str(key_file))
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stderr)
    assert str(cert_file) in result.stderr, result.stderr
    assert str(key_file) in result.stderr, result.stderr
    assert "cannot listen" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not data.exists()


# -- 5. usage errors -----------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--tls-cert", "{cert}"], "--tls-cert and --tls-key go together"),
    (["--tls-key", "{key}"], "--tls-cert and --tls-key go together"),
    (["--tls", "auto", "--tls-cert", "{cert}", "--tls-key", "{key}"],
     "give --tls-cert/--tls-key or --tls auto, not both"),
    (["--tls-name", "tether.test"], "--tls-name is for --tls auto"),
    (["--tls-cert", "{missing}", "--tls-key", "{key}"], "no such file: {missing}"),
    (["--tls-cert", "{cert}", "--tls-key", "{missing}"], "no such file: {missing}"),
    (["--tls", "manual"], "invalid choice"),
], ids=["cert-without-key", "key-without-cert", "auto-and-files", "name-without-auto",
        "missing-cert", "missing-key", "bad-tls-mode"])
def test_server_tls_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    files = {"cert": tmp_path / "cert.pem", "key": tmp_path / "key.pem",
             "missing": tmp_path / "absent.pem"}
    files["cert"].write_text("x")
    files["key"].write_text("x")
    subst = {k: str(v) for k, v in files.items()}
    data = tmp_path / "data"
    result = server_usage(data, *[a.format(**subst) for a in args])
    assert result.returncode == EXIT_USAGE, (result.stdout, result.stderr)
    assert message.format(**subst) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not data.exists()  # refused before anything is made


def test_register_ca_with_http_url_is_a_usage_error(auto_server: TlsServer,
                                                    tmp_path: Path) -> None:
    state = tmp_path / "agent"
    # A closed port: were --ca not refused up front, this would be exit 5 (unreachable).
    result = agent_register("--server", f"http://127.0.0.1:{closed_port()}",
                            "--activation-id", "act-x", "--activation-code", "code",
                            "--state-dir", str(state), "--ca", str(auto_server.ca))
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stderr)
    assert "--ca is for an https:// server" in result.stderr, result.stderr
    assert not state.exists() or not any(state.iterdir())


def _ca_file(tmp_path: Path, kind: str, auto_server: TlsServer) -> Path:
    path = tmp_path / f"{kind}.pem"
    tls_dir = auto_server.data_dir / "tls"
    if kind == "text":
        path.write_text("this is not a certificate\n")
    elif kind == "private-key":  # the easy mistake: ca-key.pem for ca.pem
        shutil.copy(tls_dir / "ca-key.pem", path)
    elif kind == "der":
        path.write_bytes(der(tls_dir / "ca.pem"))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "missing":
        pass
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("text", "not a PEM CA certificate"),
    ("private-key", "not a PEM CA certificate"),
    ("der", "not a PEM CA certificate"),
    ("missing", "cannot read --ca"),
    ("empty", "not a PEM CA certificate"),
])
def test_register_ca_that_is_not_a_certificate(auto_server: TlsServer, tmp_path: Path,
                                               kind: str, message: str) -> None:
    ca = _ca_file(tmp_path, kind, auto_server)
    state = tmp_path / "agent"
    # A closed port: were the file accepted, this would be exit 5 (unreachable).
    result = agent_register("--server", f"https://127.0.0.1:{closed_port()}",
                            "--activation-id", "act-x", "--activation-code", "code",
                            "--state-dir", str(state), "--ca", str(ca))
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stderr)
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert not (state / "identity.json").exists()


def test_empty_ca_file_with_http_url_is_a_usage_error(tmp_path: Path,
                                                      servers: list[Server]) -> None:
    plain = Server(tmp_path / "plain")  # plain http, as harness.Server runs it
    servers.append(plain)
    plain.start()
    empty = tmp_path / "empty.pem"
    empty.write_bytes(b"")
    state = tmp_path / "agent"
    result = register(plain, state, "--ca", str(empty))
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stdout, result.stderr)
    assert not (state / "identity.json").exists()
