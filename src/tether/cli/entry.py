"""The ``tether`` command's first step: say plainly when it cannot run here, and why.

The base install is a device's: the agent and the protocol, on Python 3.9 or
newer. The operator CLI and the server need Python 3.10 or newer and the
``server`` extra. Without this check, ``tether`` on a device's 3.9 or on an
agent-only install dies in a traceback about a missing module or a type
annotation, instead of naming the fix. Standard library only, so it always runs.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Optional

MIN_PYTHON = (3, 10)
SERVER_EXTRA_MODULES = ("fastapi", "sqlalchemy", "uvicorn")


def cannot_run() -> Optional[str]:
    """Why ``tether`` cannot run on this interpreter, or None."""
    if sys.version_info < MIN_PYTHON:
        return (f"the operator CLI and the server need Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} "
                f"or newer; this is Python {sys.version.split()[0]}. The device agent "
                f"(tether-agent) runs here.")
    missing = [m for m in SERVER_EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        return (f"the operator CLI and the server come with the server extra, which is not "
                f"installed here ({', '.join(missing)} missing): pip install 'tether[server]'")
    return None


def main() -> int:
    reason = cannot_run()
    if reason is not None:
        print(f"tether: {reason}", file=sys.stderr)
        return 2
    from tether.cli.main import main as run

    return run()
