"""The one-line install, on a device whose only link is ``ppp0`` and that has no internet.

Why: a device in a closed network cannot reach a package index, so the agent and
its dependencies must come from the operator's own server. This runs the real
thing over ``pppnet.PppNetwork``: the wheels are fetched once where the index is
reachable (the root namespace), the server in the server namespace serves them,
and the device fetches the installer by the server's name with ``curl`` (and
``wget``) and pipes it into ``sh``, as an operator would type it on a device.

PRODUCT CONTRACT under test (written against the spec while the feature was
being written):

- ``python -m tether agent-bundle fetch --data-dir D`` downloads the agent's
  dependency wheels (websockets, ``py3-none-any``: one for Python 3.9, one for
  >= 3.10) into ``D/agent-bundle/``; the server builds its own tether wheel.
- The server, started with ``--data-dir D``, serves without authentication
  ``GET /agent/install.sh`` (POSIX sh), ``GET /agent/wheels?python=X.Y``
  (text/plain, one wheel filename per line: the wheels that Python needs) and
  ``GET /agent/wheels/<filename>``.
- ``curl -fsS URL/agent/install.sh | sh -s -- --activation-id ID
  --activation-code CODE [--python PATH] [--prefix DIR] [--state-dir DIR]
  [--run-as USER] [--no-service] [--server URL]`` (or ``wget -qO- URL | sh -s
  -- ...``) installs the agent into ``PREFIX/venv``, registers it unless the
  state dir already holds an identity (then it keeps it and says ``already
  registered as mi-...``), prints a line containing ``registered as mi-<17
  hex>``, and installs a systemd unit where systemd runs unless
  ``--no-service``; without systemd it prints how to run the agent,
  ``PREFIX/venv/bin/tether-agent run --state-dir STATE``. Re-running upgrades in
  place and keeps the identity.

Everything the device does stays inside the namespaces: the tests check that
first (routes only over ``ppp0``, index names do not resolve), and never send
anything to an address outside them themselves.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pppnet import DEVICE_ADDR, OutputWatcher, PppNetwork, clean_env, unavailable_reason

import tether

pytestmark = pytest.mark.netns

PORT = 8400  # the server namespace is fresh, so any port is free there
NODE_ID = r"mi-[0-9a-f]{17}"
REGISTERED = re.compile(rf"registered as ({NODE_ID})")
# What a device's shell has: no pyenv, no dev venv, no pip settings of this host.
DEVICE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Names a device would need to reach a package index; none may resolve there.
INDEX_HOSTS = ("pypi.org", "files.pythonhosted.org")
SERVER_ONLY = ("fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "pydantic",
               "psycopg", "aiosqlite", "anyio", "httpx")
INSTALL_TIMEOUT = 300
HAS_SYSTEMD = os.path.exists("/run/systemd/system")


# -- the bundle, fetched once where the index is reachable ---------------------

TIMINGS: dict[str, float] = {}  # phase -> seconds, printed after the module


def index_env() -> dict[str, str]:
    """This host's environment for reaching the index (proxies and pip settings kept)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("TETHER_", "PYTHON", "VIRTUAL_ENV"))}


@pytest.fixture(scope="module")
def fetched_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A server data dir after ``agent-bundle fetch`` (root namespace), before any start.

    Fetched once per module; each test copies it, which is the same as fetching
    into its own data dir.
    """
    reason = unavailable_reason()
    if reason is not None:  # do not download for tests that will be skipped anyway
        pytest.skip(f"ppp_network {reason}")
    data_dir = tmp_path_factory.mktemp("bundle") / "server"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tether", "agent-bundle", "fetch", "--data-dir", str(data_dir)],
        capture_output=True, text=True, env=index_env(), timeout=600, check=False)
    assert result.returncode == 0, (
        f"agent-bundle fetch: exit {result.returncode}\n{result.stdout}{result.stderr}")
    TIMINGS["agent-bundle fetch (root ns)"] = time.monotonic() - started
    wheels = sorted(p.name for p in (data_dir / "agent-bundle").glob("*.whl"))
    websockets = [w for w in wheels if w.startswith("websockets-")]
    assert len(websockets) >= 2 and all(w.endswith("-py3-none-any.whl") for w in websockets), (
        wheels)
    assert any(w.startswith("websockets-15.") for w in websockets), wheels  # the 3.9 line
    assert not [w for w in wheels if w.split("-")[0].lower() in SERVER_ONLY], wheels
    return data_dir


@pytest.fixture(scope="module", autouse=True)
def report_timings() -> Iterator[None]:
    yield
    if TIMINGS:
        print("\ninstall timings:")
        for phase, seconds in TIMINGS.items():
            print(f"  {seconds:7.1f} s  {phase}")


@contextlib.contextmanager
def timed(phase: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    TIMINGS[phase] = time.monotonic() - started


# -- interpreters ----------------------------------------------------------------


def interpreter_version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30, check=False,
                             env={"PATH": DEVICE_PATH})
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    major, minor = out.stdout.split()
    return int(major), int(minor)


def base_python() -> str:
    """This run's interpreter outside its virtual environment (a device has no venv)."""
    for name in (f"python{sys.version_info[0]}.{sys.version_info[1]}", "python3"):
        candidate = Path(sys.base_prefix) / "bin" / name
        if candidate.is_file() and interpreter_version(str(candidate)) == sys.version_info[:2]:
            return str(candidate)
    pytest.skip(f"no base interpreter under {sys.base_prefix}/bin for this run's Python")


def find_python39() -> str | None:
    """A working python3.9: on PATH, or any pyenv 3.9.x (its shim may point elsewhere)."""
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [shutil.which("python3.9"),
                  *sorted(glob.glob(os.path.join(pyenv_root, "versions", "3.9*", "bin",
                                                 "python3.9")), reverse=True)]
    for candidate in candidates:
        if candidate and interpreter_version(candidate) == (3, 9):
            return candidate
    return None


# -- the site: server, CLI and device ---------------------------------------------


class Site:
    """One test's server (server ns), operator CLI (server ns) and device (device ns)."""

    def __init__(self, net: PppNetwork, tmp: Path, fetched: Path, tls: bool = False) -> None:
        self.net, self.tmp, self.tls = net, tmp, tls
        self.data_dir = tmp / "server"
        shutil.copytree(fetched, self.data_dir)
        scheme = "https" if tls else "http"
        self.server_url = f"{scheme}://{net.server_addr}:{PORT}"
        self.device_url = f"{scheme}://{net.server_name}:{PORT}"  # how the device knows it
        self.ca = self.data_dir / "tls" / "ca.pem"  # made by --tls auto at start
        self.home = tmp / "device-home"
        self.home.mkdir()
        self.watchers: dict[str, OutputWatcher] = {}
        self.agents: list[subprocess.Popen[str]] = []
        self.token = ""

    def logs(self) -> str:
        return "".join(f"\n--- {name} ---\n{w.text()[-6000:]}"
                       for name, w in self.watchers.items())

    # server and CLI

    def start_server(self) -> None:
        transport = (["--tls", "auto", "--tls-name", self.net.server_name,
                      "--tls-name", self.net.server_addr] if self.tls else ["--insecure"])
        _, self.watchers["server"] = self.net.spawn(self.net.server_ns, [
            sys.executable, "-m", "tether", "server", *transport,
            "--data-dir", str(self.data_dir),
            "--host", self.net.server_addr, "--port", str(PORT),
            "--keepalive-interval", "2", "--keepalive-timeout", "2"], env=clean_env())
        self.watchers["server"].wait_for(f"listening on {self.server_url}", timeout=60)
        token_file = self.data_dir / "admin-token"
        assert token_file.is_file(), f"no admin token after start{self.logs()}"
        self.token = token_file.read_text().strip()

    def cli_result(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.net.run(self.net.server_ns, [sys.executable, "-m", "tether.cli", *args],
                            env=clean_env(TETHER_SERVER=self.server_url,
                                          TETHER_TOKEN=self.token,
                                          TETHER_CA=str(self.ca) if self.tls else ""),
                            timeout=180)

    def cli(self, *args: str) -> Any:
        """The operator CLI's --json output, parsed; it must exit 0."""
        result = self.cli_result(*args)
        assert result.returncode == 0, (
            f"tether.cli {args}: exit {result.returncode}\n{result.stdout}{result.stderr}"
            f"{self.logs()}")
        return json.loads(result.stdout)

    def activation(self) -> tuple[str, str]:
        created = self.cli("activation", "create", "--json")
        return created["activation_id"], created["activation_code"]

    # the device

    def device_env(self, path: str = DEVICE_PATH) -> dict[str, str]:
        return {"PATH": path, "HOME": str(self.home), "LANG": "C.UTF-8"}

    def path_without(self, tool: str) -> str:
        """A PATH of the device's commands minus ``tool``: a device that only has wget."""
        bin_dir = self.tmp / f"device-bin-without-{tool}"
        bin_dir.mkdir()
        for folder in map(Path, DEVICE_PATH.split(":")):
            for entry in sorted(folder.iterdir()) if folder.is_dir() else ():
                link = bin_dir / entry.name
                if entry.name != tool and not os.path.lexists(link) and entry.is_file() \
                        and os.access(entry, os.X_OK):
                    link.symlink_to(entry)
        return str(bin_dir)

    def device(self, argv: list[str], timeout: float = 60,
               path: str = DEVICE_PATH) -> subprocess.CompletedProcess[str]:
        """A command in the device namespace with a device's plain environment.

        In its own process group, killed whole on timeout (and by the network's
        teardown), so a hung pipeline cannot outlive the test.
        """
        proc = self.net.popen(self.net.device_ns, argv, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=self.device_env(path))
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{argv} not done within {timeout}s\n{out}{err}{self.logs()}")
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)

    def install(self, fetcher: str, *args: str, path: str = DEVICE_PATH,
                ca: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``curl ... | sh -s -- ARGS`` (or wget) on the device; pipefail catches a failed fetch.

        Over plain HTTP off the machine the installer must be told ``--insecure``;
        with ``ca`` the script itself is fetched against that CA, as the
        installer's comment tells an operator to type it.
        """
        url = shlex.quote(f"{self.device_url}/agent/install.sh")
        pin = {"curl": f"--cacert {shlex.quote(str(ca))} ",
               "wget": f"--ca-certificate={shlex.quote(str(ca))} "}[fetcher] if ca else ""
        get = {"curl": f"curl -fsS {pin}{url}", "wget": f"wget -qO- {pin}{url}"}[fetcher]
        extra = [] if self.tls else ["--insecure"]
        pipeline = f"{get} | sh -s -- {shlex.join([*extra, *args])}"
        return self.device(["bash", "-o", "pipefail", "-c", pipeline], timeout=INSTALL_TIMEOUT,
                           path=path)

    def start_agent(self, name: str, prefix: Path, state: Path) -> subprocess.Popen[str]:
        proc, self.watchers[name] = self.net.spawn(self.net.device_ns, [
            str(prefix / "venv" / "bin" / "tether-agent"), "run", "--state-dir", str(state),
            "--reconnect-cap", "2"], env=self.device_env())
        self.agents.append(proc)
        return proc

    def stop_agent(self, proc: subprocess.Popen[str]) -> None:
        """SIGTERM to the agent's own process group; SIGKILL if it does not go."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def wait_online(self, name: str, node_id: str, timeout: float = 60) -> dict[str, Any]:
        """The agent's own word that it connected, then the server's view of the node."""
        self.watchers[name].wait_for(f"as {node_id}", timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            node: dict[str, Any] = self.cli("nodes", "show", node_id, "--json")
            if node["ping_status"] == "Online" and node["inventory"]:
                return node
            assert time.monotonic() < deadline, f"never Online: {node}{self.logs()}"
            time.sleep(0.5)  # poll interval of a deadline-bound poll, not synchronisation

    def run_command(self, node_id: str, script: str) -> dict[str, Any]:
        result = self.cli_result("run", "--target", node_id, "--timeout", "1m", "--json",
                                 "--", script)
        assert result.stdout.strip(), f"run: no output\n{result.stderr}{self.logs()}"
        out: dict[str, Any] = json.loads(result.stdout)
        assert result.returncode == 0 and out["status"] == "Success", (
            f"run: exit {result.returncode}: {out}\n{result.stderr}{self.logs()}")
        return out

    def wheel_list(self, python: str) -> list[str]:
        """``GET /agent/wheels?python=X.Y`` from the device, unauthenticated."""
        url = f"{self.device_url}/agent/wheels?python={python}"
        typed = self.device(["curl", "-fsS", "-o", "/dev/null", "-w", "%{content_type}", url])
        assert typed.returncode == 0, typed.stderr
        assert typed.stdout.startswith("text/plain"), typed.stdout
        listed = self.device(["curl", "-fsS", url])
        assert listed.returncode == 0, listed.stderr
        names = [line for line in listed.stdout.splitlines() if line.strip()]
        assert names and all(n.endswith(".whl") and "/" not in n for n in names), names
        return names


# -- checks -------------------------------------------------------------------------


def assert_device_is_closed(net: PppNetwork) -> None:
    """The device's only way out is ppp0 to the carrier, and index names do not resolve.

    Reads routing tables and asks the device's own resolver, whose only nameserver
    is the test network's private zone at the carrier, so no packet leaves the test's
    namespaces.
    """
    def ip_json(*args: str) -> list[dict[str, Any]]:
        result = net.run(net.device_ns, ["ip", "-j", *args])
        assert result.returncode == 0, result.stderr
        parsed: list[dict[str, Any]] = json.loads(result.stdout or "[]")
        return parsed

    links = {link["ifname"] for link in ip_json("link", "show")}
    assert links == {"lo", "ppp0"}, links
    main4 = ip_json("-4", "route", "show")
    assert {r.get("dev") for r in main4} == {"ppp0"}, main4
    assert {r["dst"] for r in main4} <= {"default", "10.64.0.1"}, main4
    every = ip_json("-4", "route", "show", "table", "all") + ip_json(
        "-6", "route", "show", "table", "all")
    assert {r.get("dev") for r in every} <= {"lo", "ppp0"}, every
    assert not [r for r in ip_json("-6", "route", "show") if r.get("dst") == "default"]

    server = net.run(net.device_ns, ["getent", "hosts", net.server_name])
    assert server.returncode == 0 and server.stdout.split()[0] == net.server_addr, server
    for host in INDEX_HOSTS:
        looked_up = net.run(net.device_ns, ["getent", "ahosts", host], timeout=30)
        assert looked_up.returncode != 0 and not looked_up.stdout.strip(), (
            f"{host} resolves on the device: {looked_up.stdout}")


def site_packages(prefix: Path, version: tuple[int, int]) -> Path:
    found = prefix / "venv" / "lib" / f"python{version[0]}.{version[1]}" / "site-packages"
    assert found.is_dir(), sorted(str(p) for p in (prefix / "venv").rglob("site-packages"))
    return found


def installed(site: Path) -> dict[str, str]:
    """Distribution name (normalised) -> version, from the dist-info directories."""
    dists = {}
    for info in site.glob("*.dist-info"):
        name, version = info.name[: -len(".dist-info")].split("-", 1)
        dists[name.lower().replace("_", "-")] = version
    return dists


def assert_agent_only_venv(site: Site, prefix: Path, version: tuple[int, int]) -> dict[str, str]:
    packages = site_packages(prefix, version)
    dists = installed(packages)
    assert "tether" in dists and "websockets" in dists, dists
    assert (packages / "tether" / "agent").is_dir() and (packages / "websockets").is_dir()
    present = {p.name.lower() for p in packages.iterdir()}
    leaked = sorted(set(SERVER_ONLY) & (present | set(dists)))
    assert not leaked, f"the device venv got server dependencies: {leaked}"
    # The venv's own copy, not the working tree (no editable install, no path hook).
    probe = site.device([str(prefix / "venv" / "bin" / "python"), "-c",
                         "import sys, tether, websockets; "
                         "print(tether.__file__); print(websockets.__file__); "
                         "print(*sys.version_info[:2])"])
    assert probe.returncode == 0, probe.stderr
    tether_file, websockets_file, py = probe.stdout.splitlines()
    assert tether_file.startswith(str(packages)), tether_file
    assert websockets_file.startswith(str(packages)), websockets_file
    assert tuple(int(x) for x in py.split()) == version
    return dists


def registered_node(result: subprocess.CompletedProcess[str], site: Site) -> str:
    assert result.returncode == 0, (
        f"installer: exit {result.returncode}\n{result.stdout}\n{result.stderr}{site.logs()}")
    found = REGISTERED.findall(result.stdout + result.stderr)
    assert found, f"no 'registered as mi-...' line:\n{result.stdout}\n{result.stderr}"
    assert len(set(found)) == 1, found
    return str(found[0])


def run_hint(prefix: Path, state: Path) -> str:
    return f"{prefix}/venv/bin/tether-agent run --state-dir {state}"


# -- tests ----------------------------------------------------------------------------


@pytest.fixture
def site(ppp_network: PppNetwork, tmp_path: Path, fetched_data_dir: Path) -> Site:
    assert_device_is_closed(ppp_network)
    site = Site(ppp_network, tmp_path, fetched_data_dir)
    with timed(f"server start ({tmp_path.name})"):
        site.start_server()
    return site


@pytest.fixture
def tls_site(ppp_network: PppNetwork, tmp_path: Path, fetched_data_dir: Path) -> Site:
    """A server on ``--tls auto``: tether's private CA, a certificate for its name."""
    assert_device_is_closed(ppp_network)
    site = Site(ppp_network, tmp_path, fetched_data_dir, tls=True)
    with timed(f"TLS server start ({tmp_path.name})"):
        site.start_server()
    return site


def test_install_with_curl_then_upgrade_with_wget(site: Site, tmp_path: Path) -> None:
    python = base_python()
    version = (sys.version_info[0], sys.version_info[1])
    prefix, state = tmp_path / "opt" / "tether-agent", tmp_path / "var" / "tether"

    # What the server offers this Python: tether and websockets, and no server deps.
    listed = site.wheel_list(f"{version[0]}.{version[1]}")
    assert {n.split("-")[0].lower() for n in listed} == {"tether", "websockets"}, listed
    (ws_wheel,) = [n for n in listed if n.startswith("websockets-")]
    assert ws_wheel.endswith("-py3-none-any.whl"), listed
    if version >= (3, 10):
        assert int(ws_wheel.split("-")[1].split(".")[0]) >= 16, listed  # not the 3.9 line
    fetched = site.tmp / "fetched.whl"
    got = site.device(["curl", "-fsS", "-o", str(fetched),
                       f"{site.device_url}/agent/wheels/{ws_wheel}"])
    assert got.returncode == 0, got.stderr
    assert fetched.read_bytes() == (site.data_dir / "agent-bundle" / ws_wheel).read_bytes()
    assert zipfile.ZipFile(fetched).testzip() is None

    # 1. curl | sh, this machine's Python, no service.
    activation_id, code = site.activation()
    with timed("install with curl"):
        first = site.install("curl", "--activation-id", activation_id,
                             "--activation-code", code, "--python", python,
                             "--prefix", str(prefix), "--state-dir", str(state), "--no-service")
    node_id = registered_node(first, site)
    assert "already registered" not in first.stdout, first.stdout
    dists = assert_agent_only_venv(site, prefix, version)
    assert dists["websockets"] == ws_wheel.split("-")[1], (dists, ws_wheel)
    identity = (state / "identity.json").read_bytes()

    agent = site.start_agent("agent", prefix, state)
    with timed("agent online after install"):
        node = site.wait_online("agent", node_id)
    assert node["primary_address"] == DEVICE_ADDR, node
    assert node["peer_address"] == DEVICE_ADDR, node
    assert "ppp0" in {i["name"] for i in node["inventory"]["interfaces"]}, node["inventory"]
    out = site.run_command(node_id, "echo installed-$TETHER_NODE_ID")
    assert out["invocations"][0]["stdout"] == f"installed-{node_id}\n", out

    # 2. wget | sh again with the same (used-up) activation: upgrade in place, on a
    # device without curl, so the installer's own downloads go through wget too.
    site.stop_agent(agent)
    # Make the installed agent an older one, with a module the new one does not have,
    # so the re-run has something to upgrade and to remove.
    package = site_packages(prefix, version) / "tether"
    init = package / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', '__version__ = "0.0.1"', init.read_text()))
    # Same size, maybe the same second: the cached bytecode would still say the old version.
    shutil.rmtree(package / "__pycache__", ignore_errors=True)
    (package / "left_by_the_old_version.py").write_text("")
    agent_bin = str(prefix / "venv" / "bin" / "tether-agent")
    assert site.device([agent_bin, "--version"]).stdout.split() == ["tether-agent", "0.0.1"]
    wget_only = site.path_without("curl")
    found = site.device(["sh", "-c", "command -v curl; command -v wget"], path=wget_only)
    assert [Path(line).name for line in found.stdout.split()] == ["wget"], found
    again = ["--activation-id", activation_id, "--activation-code", code,
             "--python", python, "--prefix", str(prefix), "--state-dir", str(state)]
    if HAS_SYSTEMD:  # never install a unit on the machine running the tests
        again.append("--no-service")
    with timed("re-install with wget"):
        second = site.install("wget", *again, path=wget_only)
    assert registered_node(second, site) == node_id
    assert f"already registered as {node_id}" in second.stdout + second.stderr, second.stdout
    if not HAS_SYSTEMD:
        assert run_hint(prefix, state) in second.stdout + second.stderr, (
            f"no run instruction without systemd:\n{second.stdout}\n{second.stderr}")
    assert (state / "identity.json").read_bytes() == identity
    assert_agent_only_venv(site, prefix, version)
    assert not (package / "left_by_the_old_version.py").exists()
    upgraded = site.device([agent_bin, "--version"]).stdout.split()
    assert upgraded == ["tether-agent", tether.__version__], upgraded

    site.start_agent("agent-after-upgrade", prefix, state)
    with timed("agent online after upgrade"):
        node = site.wait_online("agent-after-upgrade", node_id)
    assert node["node_id"] == node_id and node["primary_address"] == DEVICE_ADDR, node
    out = site.run_command(node_id, "echo upgraded")
    assert out["invocations"][0]["stdout"] == "upgraded\n", out
    nodes = site.cli("nodes", "list", "--json")
    assert [n["node_id"] for n in nodes] == [node_id], nodes


def test_install_on_python39_gets_the_39_websockets(site: Site, tmp_path: Path) -> None:
    python39 = find_python39()
    if python39 is None:
        pytest.skip("no python3.9 on PATH or under pyenv (~/.pyenv/versions/3.9*); "
                    "the Python 3.9 device install needs one")
    prefix, state = tmp_path / "opt" / "tether-agent-39", tmp_path / "var" / "tether-39"

    listed = site.wheel_list("3.9")
    (ws_wheel,) = [n for n in listed if n.startswith("websockets-")]
    assert ws_wheel.startswith("websockets-15.") and ws_wheel.endswith("-py3-none-any.whl"), (
        listed)
    assert any(n.startswith("tether-") for n in listed), listed

    activation_id, code = site.activation()
    with timed("install on Python 3.9 with curl"):
        result = site.install("curl", "--activation-id", activation_id,
                              "--activation-code", code, "--python", python39,
                              "--prefix", str(prefix), "--state-dir", str(state),
                              "--server", site.device_url, "--no-service")
    node_id = registered_node(result, site)
    dists = assert_agent_only_venv(site, prefix, (3, 9))
    assert dists["websockets"].startswith("15."), dists
    assert dists["websockets"] == ws_wheel.split("-")[1], (dists, ws_wheel)

    site.start_agent("agent39", prefix, state)
    with timed("Python 3.9 agent online"):
        node = site.wait_online("agent39", node_id)
    assert node["inventory"]["python_version"].startswith("3.9"), node["inventory"]
    assert node["primary_address"] == DEVICE_ADDR, node
    out = site.run_command(node_id, "echo hello from $TETHER_NODE_ID")
    assert out["invocations"][0]["stdout"] == f"hello from {node_id}\n", out


def test_install_over_private_ca(tls_site: Site, tmp_path: Path) -> None:
    """The whole install over https with tether's own CA: nothing unverified on the way.

    The operator brings ``ca.pem`` to the device (here: copied beside the
    device's home, as provisioning would) after comparing the fingerprint the
    server printed with the one ``GET /agent/ca.pem`` gives; curl fetches the
    installer against it, the installer fetches the wheels against it, and the
    agent pins it for every later connection.
    """
    site, python = tls_site, base_python()
    prefix, state = tmp_path / "opt" / "tether-agent-tls", tmp_path / "var" / "tether-tls"
    printed = re.search(r"SHA-256 fingerprint ([0-9A-F:]{95})", site.watchers["server"].text())
    assert printed, f"the server printed no CA fingerprint{site.logs()}"
    device_ca = site.home / "ca.pem"
    got = site.device(["curl", "-fsS", "-k", "-o", str(device_ca),
                       f"{site.device_url}/agent/ca.pem"])
    assert got.returncode == 0, got.stderr
    shown = site.device(["openssl", "x509", "-noout", "-fingerprint", "-sha256",
                         "-in", str(device_ca)])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip().split("=", 1)[1] == printed.group(1), (shown.stdout, printed)
    assert device_ca.read_bytes() == site.ca.read_bytes()

    # Without the CA nothing verifies: curl refuses, and so does the installer's
    # own download when the script is piped in some other way.
    bare = site.device(["curl", "-fsS", f"{site.device_url}/agent/install.sh"])
    assert bare.returncode == 60, (bare.returncode, bare.stderr)  # peer certificate
    activation_id, code = site.activation()
    script = site.tmp / "install.sh"
    fetched = site.device(["curl", "-fsS", "--cacert", str(device_ca), "-o", str(script),
                           f"{site.device_url}/agent/install.sh"])
    assert fetched.returncode == 0, fetched.stderr
    assert f"SERVER='{site.device_url}'" in script.read_text()
    unpinned = site.device(["sh", str(script), "--activation-id", activation_id,
                            "--activation-code", code, "--python", python,
                            "--prefix", str(prefix), "--state-dir", str(state),
                            "--no-service"], timeout=INSTALL_TIMEOUT)
    assert unpinned.returncode != 0, unpinned.stdout
    assert "could not get the wheel list" in unpinned.stderr and "--ca" in unpinned.stderr, (
        unpinned.stderr)
    assert not (state / "identity.json").exists()

    # 1. curl --cacert | sh -s -- --ca: installed, registered, the CA pinned.
    with timed("install over TLS with curl"):
        first = site.install("curl", "--activation-id", activation_id,
                             "--activation-code", code, "--python", python,
                             "--prefix", str(prefix), "--state-dir", str(state),
                             "--ca", str(device_ca), "--no-service", ca=device_ca)
    node_id = registered_node(first, site)
    assert (state / "ca.pem").read_bytes() == site.ca.read_bytes()
    agent = site.start_agent("tls-agent", prefix, state)
    node = site.wait_online("tls-agent", node_id)
    assert node["primary_address"] == DEVICE_ADDR, node
    out = site.run_command(node_id, "echo over-tls")
    assert out["invocations"][0]["stdout"] == "over-tls\n", out

    # 2. Upgrade with wget on a device without curl, against the same CA.
    site.stop_agent(agent)
    wget_only = site.path_without("curl")
    again = site.install("wget", "--python", python, "--prefix", str(prefix),
                         "--state-dir", str(state), "--ca", str(device_ca), "--no-service",
                         path=wget_only, ca=device_ca)
    assert registered_node(again, site) == node_id
    assert f"already registered as {node_id}" in again.stdout, again.stdout

    # 3. A CA that is not the server's: the installer stops before installing.
    other = tmp_path / "other-ca"
    subprocess.run([sys.executable, "-c",
                    "import sys; from pathlib import Path; from tether.server import tls; "
                    "tls.auto(Path(sys.argv[1]), ['elsewhere.test'])", str(other)],
                   check=True, capture_output=True, timeout=60)
    wrong = site.device(["sh", str(script), "--python", python, "--prefix",
                         str(tmp_path / "opt" / "wrong"), "--state-dir", str(state),
                         "--ca", str(other / "ca.pem"), "--no-service"],
                        timeout=INSTALL_TIMEOUT)
    assert wrong.returncode != 0 and "could not get the wheel list" in wrong.stderr, wrong.stderr
    assert not (tmp_path / "opt" / "wrong").exists()
