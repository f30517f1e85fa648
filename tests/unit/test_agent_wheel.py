"""The agent wheel the server packs holds every tether module the agent's code imports.

A device installs only this wheel. A module the agent imports but the wheel
leaves out (``tether.partfile``, shared with the CLI, sits beside the agent's
packages rather than in them) would fail only on a device, at the first copy.
"""

from __future__ import annotations

import ast
import zipfile
from pathlib import Path

from tether.server.agent_dist.wheel import pack_agent_wheel


def _tether_imports(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == "tether")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                node.module.split(".")[0] == "tether":
            names.add(node.module)
    return names


def test_every_tether_import_of_the_agent_wheel_is_in_it(tmp_path: Path) -> None:
    with zipfile.ZipFile(pack_agent_wheel(tmp_path)) as wheel:
        files = {n for n in wheel.namelist() if n.endswith(".py")}
        sources = {n: wheel.read(n).decode() for n in files}

    def present(module: str) -> bool:
        path = module.replace(".", "/")
        return f"{path}.py" in files or f"{path}/__init__.py" in files

    missing = sorted({f"{name} (imported by {where})" for where, source in sources.items()
                      for name in _tether_imports(source) if not present(name)})
    assert missing == []
    assert "tether/partfile.py" in files and "tether/agent/filehelper.py" in files
