"""The agent bundle: the wheels a device needs, chosen for its Python version.

``DATA/agent-bundle/`` holds the dependency wheels (``tether agent-bundle
fetch`` puts them there, from wherever the operator can reach a package
index); the server adds the agent wheel it packs from its own code. Which
dependency wheel a device gets follows tether's own requirement markers, so
a Python 3.9 device gets the websockets line that still supports it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import parse_wheel_filename
from packaging.version import Version

from tether.protocol.netaddr import plain_http_off_machine
from tether.server.agent_dist.wheel import agent_wheel_name, base_requirements, pack_agent_wheel

SUPPORTED_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14")
_PYTHON = re.compile(r"3\.\d{1,2}")
AGENT_DIST = "tether"  # the agent wheel's distribution name (wheel.agent_wheel_name)


class BundleError(Exception):
    pass


class AgentBundle:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._packed = False

    def prepare(self) -> None:
        """Pack the agent wheel from the code this process runs, once per process.

        Packing again at every start (a few milliseconds) means a rebuilt server
        never serves stale agent code under an unchanged version number.
        """
        if not self._packed:
            for old in self.folder.glob("tether-*.whl"):
                old.unlink()
            pack_agent_wheel(self.folder)
            self._packed = True

    def wheels_for(self, python: str) -> list[str]:
        """File names of the wheels a device with this Python must install."""
        if not _PYTHON.fullmatch(python):
            raise BundleError(f"python must look like 3.11, got {python[:20]!r}")
        self.prepare()
        env = {"python_version": python, "python_full_version": python + ".0", "extra": ""}
        chosen = [agent_wheel_name()]
        for text in base_requirements():
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            best = self._best(req)
            if best is None:
                raise BundleError(f"no wheel for {req} (Python {python}) in {self.folder}; "
                                  "run 'tether agent-bundle fetch'")
            chosen.append(best)
        return chosen

    def _best(self, req: Requirement) -> str | None:
        found: list[tuple[Version, str]] = []
        for path in self.folder.glob("*.whl"):
            name, version, _build, tags = parse_wheel_filename(path.name)
            if name == req.name and version in req.specifier \
                    and any(t.abi == "none" and t.platform == "any" for t in tags):
                found.append((version, path.name))
        return max(found)[1] if found else None

    def path_of(self, filename: str) -> Path | None:
        path = self.folder / filename
        if "/" in filename or not filename.endswith(".whl") or not path.is_file():
            return None
        return path


def dependency_wheels(folder: Path) -> list[Path]:
    """The wheels in the bundle other than the agent's own (``tether-*.whl``, packed by
    the server from its code): what ``fetch`` brought, and all it should count."""
    return sorted(p for p in folder.glob("*.whl")
                  if parse_wheel_filename(p.name)[0] != AGENT_DIST)


def fetch_dependencies(folder: Path, index_args: list[str]) -> list[Path]:
    """Download the pure-Python dependency wheels for every supported Python."""
    folder.mkdir(parents=True, exist_ok=True)
    for python in SUPPORTED_PYTHONS:
        env = {"python_version": python, "python_full_version": python + ".0", "extra": ""}
        for text in base_requirements():
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                 "--disable-pip-version-check", "--only-binary=:all:", "--platform", "any",
                 "--python-version", python, "--dest", str(folder), *index_args,
                 f"{req.name}{req.specifier}"], check=True)
    return dependency_wheels(folder)


DEFAULT_PORT = 8720  # tether server's --port default


def install_line(server_url: str | None, ca: Path | None) -> list[str]:
    """The installer line for devices, as the server will serve it.

    ``server_url`` is the URL devices dial (None: a SERVER placeholder with the
    default port); ``ca`` the private CA when the server runs ``--tls auto`` (its
    data directory has one), which curl must check the download against and the
    agent pins. Plain HTTP off the machine needs the agent's ``--insecure``.
    """
    scheme = "https" if ca is not None else "http"
    url = (server_url or f"{scheme}://SERVER:{DEFAULT_PORT}").rstrip("/")
    curl = "curl -fsS --cacert ca.pem" if ca is not None and url.startswith("https:") \
        else "curl -fsS"
    agent = " --ca ca.pem" if "--cacert" in curl else ""
    if plain_http_off_machine(url):
        agent += " --insecure"
    lines = [f"{curl} {url}/agent/install.sh | sh -s --{agent} "
             "--activation-id ID --activation-code CODE"]
    if "--cacert" in curl:
        lines.append(f"  (ca.pem: a copy of {ca}; check it on the device with openssl x509 "
                     "-noout -fingerprint -sha256 -in ca.pem against the server's banner)")
    if server_url is None:
        lines.append(f"  (SERVER: this machine's name or address as devices reach it, one "
                     f"the certificate names; {DEFAULT_PORT} unless 'tether server --port'; "
                     "or give --server URL)" if ca is not None else
                     f"  (SERVER: this machine's name or address as devices reach it; "
                     f"{DEFAULT_PORT} unless 'tether server --port'; or give --server URL)")
    return lines
