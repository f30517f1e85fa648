"""Packing the agent's own wheel from the code this server runs.

A device in a closed network installs the agent from the server, so the
server must be able to produce the agent's wheel wherever it runs, even when
it was itself installed from a wheel and has no source tree. A pure-Python
wheel is a zip with a ``.dist-info`` folder; this writes exactly that, with
only the packages a device needs (the agent and the protocol).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import zipfile
from pathlib import Path

import tether

AGENT_PACKAGES = ("protocol", "agent")
# Modules beside them that the agent imports too (a copy's partial file, shared with the CLI).
AGENT_MODULES = ("partfile.py",)
ENTRY_POINTS = "[console_scripts]\ntether-agent = tether.agent.cli:main\n"


def agent_wheel_name() -> str:
    return f"tether-{tether.__version__}-py3-none-any.whl"


def base_requirements() -> list[str]:
    """The device's requirements: tether's own, minus every extra's."""
    return [r for r in importlib.metadata.requires("tether") or [] if "extra ==" not in r]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _agent_files() -> list[tuple[str, bytes]]:
    root = Path(tether.__file__).parent
    files = [("tether/__init__.py", (root / "__init__.py").read_bytes()),
             ("tether/py.typed", b""),
             *((f"tether/{name}", (root / name).read_bytes()) for name in AGENT_MODULES)]
    for package in AGENT_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            files.append((f"tether/{path.relative_to(root).as_posix()}", path.read_bytes()))
    return files


def pack_agent_wheel(dest_dir: Path) -> Path:
    version = tether.__version__
    info = f"tether-{version}.dist-info"
    metadata = "\n".join([
        "Metadata-Version: 2.1", "Name: tether", f"Version: {version}",
        "Summary: tether device agent", "Requires-Python: >=3.9",
        *(f"Requires-Dist: {r}" for r in base_requirements())]) + "\n"
    wheel = ("Wheel-Version: 1.0\nGenerator: tether\nRoot-Is-Purelib: true\n"
             "Tag: py3-none-any\n")
    files = [*_agent_files(), (f"{info}/METADATA", metadata.encode()),
             (f"{info}/WHEEL", wheel.encode()),
             (f"{info}/entry_points.txt", ENTRY_POINTS.encode())]
    record = "\n".join([*(_record_line(n, d) for n, d in files), f"{info}/RECORD,,"]) + "\n"
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / agent_wheel_name()
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in [*files, (f"{info}/RECORD", record.encode())]:
            zf.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), data)
    tmp.replace(target)
    return target
