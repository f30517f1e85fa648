"""The first minutes on a TLS server, as an operator pastes them (issue 13).

Real processes only: a ``tether server --tls auto`` on loopback, the ``tether``
CLI and ``tether-agent`` through their real entry points, ``openssl`` for the
fingerprint check a device is told to run. Each test pastes what the tools
print and checks that it works as printed.
"""

from __future__ import annotations

import json
import shlex
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_tls import (
    EXIT_UNREACHABLE,
    TlsServer,
    closed_port,
    node_id_of,
    register,
    wait_listed_online,
)

from harness import PYTHON, Agent, Server, clean_env

EXIT_USAGE, EXIT_API = 2, 3
EXIT_REFUSED = 3  # tether-agent: refused by the server, or not registered


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    srv = TlsServer(tmp_path_factory.mktemp("tls"), "--tls", "auto").start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def other_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    """Another server with a private CA of its own: a CA that is not ``tls_server``'s."""
    srv = TlsServer(tmp_path_factory.mktemp("other"), "--tls", "auto").start()
    yield srv
    srv.stop()


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


def tether(*args: str, env: dict[str, str], stdin: str | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The operator CLI through its entry point (``python -m tether.cli``)."""
    return subprocess.run([PYTHON, "-m", "tether.cli", *args], capture_output=True,
                          text=True, env=env, input=stdin, timeout=120, cwd=cwd)


def pasted(line: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run a printed command line as a shell would split it; ``tether-agent`` is the
    agent's entry point (``python -m tether.agent``), ``openssl`` the system's."""
    argv = shlex.split(line)
    if argv[0] == "tether-agent":
        argv = [PYTHON, "-m", "tether.agent", *argv[1:]]
    return subprocess.run([*argv, *extra], capture_output=True, text=True, cwd=cwd,
                          env=clean_env(), timeout=60)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- 1. activation create prints the device line that works ----------------------

def test_activation_create_prints_the_ca_line_and_its_check(
        tls_server: TlsServer, tmp_path: Path) -> None:
    made = tether("activation", "create", env=tls_server.env())
    assert made.returncode == 0, made.stderr
    lines = [line.strip() for line in made.stdout.splitlines()]
    [check] = [line for line in lines if line.startswith("openssl ")]
    [reg] = [line for line in lines if line.startswith("tether-agent register")]
    assert check == "openssl x509 -noout -fingerprint -sha256 -in ca.pem"
    assert " --ca ca.pem " in reg, reg
    assert f"https://127.0.0.1:{tls_server.port} " in reg, reg
    assert tls_server.fingerprint in made.stdout, made.stdout
    assert str(tls_server.ca) in made.stdout  # where the copy comes from, on this machine

    # On the device: a copy of the CA as ca.pem; the check prints the fingerprint said.
    device = tmp_path / "device"
    device.mkdir()
    shutil.copy(tls_server.ca, device / "ca.pem")
    checked = pasted(check, device)
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip().endswith("=" + tls_server.fingerprint), checked.stdout

    # The register line, as pasted (plus a state directory this test may write).
    done = pasted(reg, device, "--state-dir", str(device / "state"))
    node_id = node_id_of(done)
    assert node_id in {n["node_id"] for n in tls_server.cli("nodes", "list")}
    assert (device / "state" / "ca.pem").read_bytes() == tls_server.ca.read_bytes()

    # The answer says so too, for scripts (and the OpenAPI document names the field).
    act = tls_server.cli("activation", "create")
    assert act["private_ca_fingerprint"] == tls_server.fingerprint


def test_the_old_line_without_ca_is_what_failed(tls_server: TlsServer, tmp_path: Path) -> None:
    """The line without ``--ca`` (what was printed before) fails as the issue quotes."""
    activation_id, code = tls_server.activation()
    result = pasted(f"tether-agent register --server {tls_server.url} --activation-id "
                    f"{activation_id} --activation-code {code}", tmp_path,
                    "--state-dir", str(tmp_path / "state"))
    assert result.returncode == EXIT_UNREACHABLE, result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr


# -- 2. tether login --ca ---------------------------------------------------------

def login_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No TETHER_SERVER/TOKEN/CA: only what ``tether login`` saved (in tmp_path)."""
    return clean_env(XDG_CONFIG_HOME=str(tmp_path / "config"), **extra)


def test_login_with_ca_keeps_it_for_later_calls(tls_server: TlsServer, other_server: TlsServer,
                                                tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    shutil.copy(tls_server.ca, ca)
    env = login_env(tmp_path)
    done = tether("login", "--server", tls_server.url, "--ca", str(ca),
                  stdin=tls_server.token + "\n", env=env)
    assert done.returncode == 0, done.stderr
    saved = tmp_path / "config" / "tether" / "cli.json"
    assert mode(saved) == 0o600 and mode(saved.parent) == 0o700
    assert json.loads(saved.read_text())["ca"] == ca.read_text()
    ca.unlink()  # a copy was kept: the original may go

    who = tether("whoami", env=env)
    assert who.returncode == 0, who.stderr
    assert "admin" in who.stdout
    listed = tether("nodes", "list", "--json", env=env)
    assert listed.returncode == 0 and isinstance(json.loads(listed.stdout), list)

    # activation create on that login: the CA is inside the login file, which is no
    # file to copy to a device, so the line names the server's ca.pem instead.
    made = tether("activation", "create", env=env)
    assert made.returncode == 0, made.stderr
    assert " --ca ca.pem " in made.stdout and tls_server.fingerprint in made.stdout
    assert "cli.json" not in made.stdout

    # TETHER_CA still overrides the saved CA: another server's CA is refused.
    other = tether("whoami", env=login_env(tmp_path, TETHER_CA=str(other_server.ca)))
    assert other.returncode == EXIT_API, other.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in other.stderr

    # A login to another server without --ca drops the saved CA with the old login.
    again = tether("login", "--server", other_server.url, "--token", other_server.token,
                   env=login_env(tmp_path, TETHER_CA=str(other_server.ca)))
    assert again.returncode == 0, again.stderr
    assert "ca" not in json.loads(saved.read_text())


def test_login_without_the_ca_fails_with_the_hint_and_saves_nothing(
        tls_server: TlsServer, tmp_path: Path) -> None:
    env = login_env(tmp_path)
    result = tether("login", "--server", tls_server.url, "--token", tls_server.token, env=env)
    assert result.returncode == EXIT_API, result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr
    assert "tether login --server URL --ca ca.pem" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "config" / "tether" / "cli.json").exists()


def test_cli_ssl_error_gets_the_agents_hint(tls_server: TlsServer) -> None:
    """TETHER_SERVER/TETHER_TOKEN without the CA: the same advice the agent gives."""
    env = clean_env(TETHER_SERVER=tls_server.url, TETHER_TOKEN=tls_server.token)
    result = tether("nodes", "list", env=env)
    assert result.returncode == EXIT_API, result.stderr
    assert "if the server uses its own CA (tether server --tls auto), pin it with" \
        in result.stderr, result.stderr
    assert "TETHER_CA=ca.pem" in result.stderr


@pytest.mark.parametrize("kind", ["not-a-ca", "missing", "http"])
def test_login_ca_usage_errors(tls_server: TlsServer, tmp_path: Path, kind: str) -> None:
    bad = tmp_path / "bad.pem"
    if kind == "not-a-ca":
        bad.write_text("hello\n")
    url = tls_server.url.replace("https://", "http://") if kind == "http" else tls_server.url
    if kind == "http":
        shutil.copy(tls_server.ca, bad)
    env = login_env(tmp_path)
    result = tether("login", "--server", url, "--token", tls_server.token, "--ca", str(bad),
                    env=env)
    assert result.returncode == EXIT_USAGE, (result.returncode, result.stderr)
    expected = {"not-a-ca": "not a PEM CA certificate", "missing": "cannot read --ca",
                "http": "--ca is for an https:// server"}[kind]
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "config" / "tether" / "cli.json").exists()


# -- 3. tether-agent configure: another URL or CA, the same identity ------------------

def configure(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tether.agent", "configure", "--state-dir", str(state),
                           "--timeout", "5", *args], capture_output=True, text=True,
                          env=clean_env(), timeout=120)


def test_configure_moves_an_http_agent_to_https_keeping_its_identity(
        tmp_path: Path, agents: list[Agent]) -> None:
    data, state = tmp_path / "data", tmp_path / "agent"
    plain = Server(data).start()
    try:
        agent = Agent(plain, state).register()
    finally:
        plain.stop()
    before = (state / "identity.json").read_bytes()
    tls = TlsServer(data, "--tls", "auto").start()  # the same database, now on https
    try:
        # Without the CA: refused with the reason and the hint, nothing changed.
        refused = configure(state, "--server", tls.url)
        assert refused.returncode == EXIT_UNREACHABLE, refused.stderr
        assert "nothing was changed" in refused.stderr, refused.stderr
        assert "certificate verification failed" in refused.stderr, refused.stderr
        assert "hint:" in refused.stderr and "Traceback" not in refused.stderr
        assert (state / "identity.json").read_bytes() == before
        assert not (state / "ca.pem").exists()
        assert sorted(p.name for p in state.iterdir()) == ["identity.json"]  # no staging left

        moved = configure(state, "--server", tls.url + "/", "--ca", str(tls.ca))
        assert moved.returncode == 0, moved.stderr
        assert f"{agent.node_id} now uses {tls.url}" in moved.stdout, moved.stdout
        assert tls.fingerprint in moved.stdout, moved.stdout
        assert f"tether-agent run --state-dir {state}" in moved.stdout
        saved = json.loads((state / "identity.json").read_text())
        assert saved["node_id"] == agent.node_id and saved["server_url"] == tls.url
        assert saved["credential"] == json.loads(before)["credential"]
        assert (state / "ca.pem").read_bytes() == tls.ca.read_bytes()
        assert mode(state / "ca.pem") == 0o600 and mode(state / "identity.json") == 0o600

        # The agent, restarted, comes back Online as the same node: no second node.
        agent.server = tls
        agents.append(agent)
        agent.start()
        assert wait_listed_online(tls, agent.node_id)["node_id"] == agent.node_id
        assert [n["node_id"] for n in tls.cli("nodes", "list")] == [agent.node_id]

        # Again without --ca: the pinned CA is kept.
        again = configure(state, "--server", tls.url)
        assert again.returncode == 0, again.stderr
        assert (state / "ca.pem").read_bytes() == tls.ca.read_bytes()
    finally:
        tls.stop()


@pytest.fixture
def registered(tls_server: TlsServer, tmp_path: Path) -> Path:
    state = tmp_path / "agent"
    node_id_of(register(tls_server, state, "--ca", str(tls_server.ca)))
    return state


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--server", "http://192.0.2.1:8720"], EXIT_USAGE, "plain HTTP off this machine"),
    (["--server", "http://127.0.0.1:1", "--ca", "CA"], EXIT_USAGE,
     "--ca is for an https:// server"),
    (["--server", "URL", "--ca", "NOT-A-CA"], EXIT_USAGE, "not a PEM CA certificate"),
    (["--server", "URL", "--ca", "MISSING"], EXIT_USAGE, "cannot read --ca"),
    (["--server", "URL", "--ca", "CA", "--no-ca"], EXIT_USAGE, "--ca and --no-ca"),
    (["--server", "tether.internal:8720"], EXIT_USAGE, "must start with http:// or https://"),
    (["--server", "OTHER", "--ca", "OTHER-CA"], EXIT_REFUSED, "auth"),  # it does not know us
    (["--server", "CLOSED"], EXIT_UNREACHABLE, "tcp"),
])
def test_configure_refusals_change_nothing(tls_server: TlsServer, other_server: TlsServer,
                                           registered: Path, tmp_path: Path, args: list[str],
                                           code: int, message: str) -> None:
    (tmp_path / "not-a-ca.pem").write_text("hello\n")
    closed = f"https://127.0.0.1:{closed_port()}"
    values = {"URL": tls_server.url, "CA": str(tls_server.ca), "OTHER": other_server.url,
              "OTHER-CA": str(other_server.ca), "NOT-A-CA": str(tmp_path / "not-a-ca.pem"),
              "MISSING": str(tmp_path / "missing.pem"), "CLOSED": closed}
    before = {p.name: p.read_bytes() for p in registered.iterdir()}
    result = configure(registered, *[values.get(a, a) for a in args])
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert {p.name: p.read_bytes() for p in registered.iterdir()} == before


def test_configure_needs_an_identity(tmp_path: Path) -> None:
    result = configure(tmp_path / "none", "--server", "https://127.0.0.1:1")
    assert result.returncode == EXIT_REFUSED, result.stderr
    assert "not registered" in result.stderr


# -- 4. agent-bundle fetch: what it counts, and the install line it prints -----------

def fetch(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "tether", "agent-bundle", "fetch", "--data-dir",
                           str(data), *args], capture_output=True, text=True, env=clean_env(),
                          timeout=600)


def test_agent_bundle_fetch_counts_dependencies_and_prints_a_working_install_line(
        tls_server: TlsServer, tmp_path: Path) -> None:
    bundle = tls_server.data_dir / "agent-bundle"
    first = fetch(tls_server.data_dir)
    assert first.returncode == 0, first.stderr
    wheels = sorted(bundle.glob("*.whl"))
    agent_wheel = [w for w in wheels if w.name.startswith("tether-")]
    deps = [w for w in wheels if not w.name.startswith("tether-")]
    assert len(agent_wheel) == 1 and deps
    assert f"{len(deps)} dependency wheel(s) in {bundle}" in first.stdout, first.stdout
    assert str(agent_wheel[0]) not in first.stdout.splitlines()  # not listed as a dependency
    # The data directory has tether's private CA: https, the CA given to curl and the agent.
    assert ("curl -fsS --cacert ca.pem https://SERVER:8720/agent/install.sh | sh -s -- "
            "--ca ca.pem --activation-id ID --activation-code CODE") in first.stdout

    # With --server (offline, from the wheels fetched): the line for this server, pasted.
    again = fetch(tls_server.data_dir, "--server", tls_server.url, "--find-links", str(bundle))
    assert again.returncode == 0, again.stderr
    # The agent's wheel is in the folder now (packed by the first run): still not counted.
    assert f"{len(deps)} dependency wheel(s) in {bundle}" in again.stdout, again.stdout
    [line] = [x.strip() for x in again.stdout.splitlines() if x.strip().startswith("curl ")]
    assert line.startswith(f"curl -fsS --cacert ca.pem {tls_server.url}/agent/install.sh "), line
    device = tmp_path / "device"
    device.mkdir()
    shutil.copy(tls_server.ca, device / "ca.pem")
    activation_id, code = tls_server.activation()
    line = line.replace("--activation-id ID --activation-code CODE",
                        f"--activation-id {activation_id} --activation-code {code} "
                        f"--prefix {device / 'prefix'} --state-dir {device / 'state'} "
                        "--no-service")
    installed = subprocess.run(["sh", "-c", line], capture_output=True, text=True, cwd=device,
                               env=clean_env(), timeout=600)
    assert installed.returncode == 0, (installed.stdout, installed.stderr)
    node_id = node_id_of(installed)
    assert node_id in {n["node_id"] for n in tls_server.cli("nodes", "list")}
    assert (device / "state" / "ca.pem").read_bytes() == tls_server.ca.read_bytes()
