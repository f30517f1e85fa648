"""Every ``tether`` call pays for what the CLI imports at start-up.

Why: the stream commands (shell, forward, cp) need websockets and asyncio, about
a sixth of the start-up; the other commands, which scripts call in loops, must
not load them. A fresh interpreter shows what importing the CLI really loads.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = ("import json, sys; import tether.cli.main; "
         "print(json.dumps(sorted(m for m in ('websockets', 'asyncio', 'fastapi', 'sqlalchemy')"
         " if m in sys.modules)))")


def test_the_cli_loads_no_stream_or_server_machinery_until_asked() -> None:
    loaded = json.loads(subprocess.run([sys.executable, "-c", PROBE], capture_output=True,
                                       text=True, check=True, timeout=60).stdout)
    assert loaded == [], loaded
