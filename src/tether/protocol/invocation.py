"""How to type one of tether's own commands so that it runs as pasted.

``./scripts/serve`` installs into ``.venv``, which is not on PATH: a printed bare
``tether-agent register ...`` answered ``command not found``. The server's banner
and the agent's "what next" lines name a command through here: bare when PATH
finds this very installation's script, else its path (relative to the current
folder when under it, as ``.venv/bin/tether``). Stdlib only: the agent uses it.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Optional

SCRIPTS = ("tether", "tether-agent")


def command_for(name: str, scripts_dir: Optional[Path] = None, cwd: Optional[Path] = None,
                path: Optional[str] = None, argv0: Optional[str] = None) -> str:
    """The shell word that runs this installation's ``name`` (``tether``, ``tether-agent``).

    The folder is the one this process was started from as typed (``argv0``, default
    ``sys.argv[0]``: ``.venv/bin/tether`` stays relative, as the reader typed it) when
    that is one of our scripts, else the interpreter's scripts folder. ``scripts_dir``,
    ``cwd`` and ``path`` (a PATH value) default to this process's; tests pass their own.
    A script that is not installed (running from a source tree) is named bare: there
    is nothing better to say.
    """
    if scripts_dir is None:
        invoked = Path(argv0 if argv0 is not None else (sys.argv[0] if sys.argv else ""))
        scripts_dir = (invoked.parent if invoked.name in SCRIPTS
                       and (invoked.parent / name).exists()
                       else Path(sysconfig.get_path("scripts")))
    mine = scripts_dir / name
    if not mine.exists():
        return name
    found = shutil.which(name, path=path)
    if found is not None and Path(found).resolve() == mine.resolve():
        return name
    here = cwd or Path.cwd()
    absolute = mine if mine.is_absolute() else here / mine
    try:
        relative = absolute.relative_to(here)
    except ValueError:
        return shlex.quote(str(absolute))
    word = str(relative) if relative.parent != Path(".") else f"./{relative}"  # never PATH's
    return shlex.quote(word)
