"""The README's quick start, run as written: a clean folder, a real server, a real agent.

Issue 13 found the quick start needing edits a newcomer could not guess (commands not on
PATH, an agent state directory that needs root, an activation id and code to copy by
hand). This test takes the ``sh`` blocks of README.md's "Quick start" section and runs
them; the only change is the port: ``./scripts/serve`` gets ``--port 0`` and the port it
prints replaces 8720 in the second block.

The folder stands for a fresh clone: no ``data/``, this checkout's ``scripts/serve``, and
``.venv`` a link to this checkout's. The one step not run is ``scripts/setup``'s pip
install, replaced by a stub: reinstalling takes 6-20 s more and would repoint the shared
editable install at a temporary folder. The README's clone-to-listening figure is
measured with the real one (``time ./scripts/serve --port 0`` in a fresh clone).

The second block runs in ``bash -e`` with a PATH that has no ``.venv/bin`` and no
``TETHER_*`` variable, so a bare ``tether`` or a missing export fails here as it would
for a reader. Its background ``tether-agent run ... &`` is stopped with the block's
process group. The banner ``./scripts/serve`` prints is pasted the same way, line by line.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from harness import Output, clean_env, spawn, stop

REPO = Path(__file__).resolve().parents[2]
README_PORT = "8720"


def quickstart_blocks(readme: str) -> list[str]:
    """The ``sh`` code blocks of the "## Quick start" section, in order."""
    section = readme.split("\n## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


def reader_env() -> dict[str, str]:
    """The environment of a reader's shell: no TETHER_*, no virtual environment on PATH."""
    env = clean_env()
    env.pop("VIRTUAL_ENV", None)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and not (Path(p) / "activate").exists())
    return env


def fresh_clone(into: Path) -> Path:
    """A folder laid out as a fresh clone, with this checkout's .venv and no install step."""
    (into / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "serve", into / "scripts" / "serve")
    setup = into / "scripts" / "setup"
    setup.write_text("#!/bin/sh\n# test stub: .venv is this checkout's, already installed\n")
    setup.chmod(0o755)
    (into / ".venv").symlink_to(REPO / ".venv")
    return into


def run_block(clone: Path, block: str, env: dict[str, str]) -> str:
    """Run ``block`` in ``bash -e`` in ``clone``; what it printed. Anything it left running
    in the background (the agent) is stopped with its process group."""
    script = clone / "block.sh"
    script.write_text(block)
    log = clone / "block.log"  # a file: the background agent keeps a pipe open
    with log.open("w") as sink:
        proc = subprocess.Popen(["bash", "-e", str(script)], cwd=clone, env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        returncode = proc.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    output = log.read_text()
    assert returncode == 0, output
    return output


@contextlib.contextmanager
def serving(clone: Path, serve_line: str, env: dict[str, str]) -> Iterator[tuple[str, Output]]:
    """``serve_line --port 0`` running in ``clone``: the port it listens on, and its output."""
    command = f"cd {shlex.quote(str(clone))} && {serve_line} --port 0"
    server, server_out = spawn(["sh", "-c", command], env)
    try:
        yield server_out.wait_for(r"listening on http://127\.0\.0\.1:(\d+)", timeout=60)[1], \
            server_out
    finally:
        stop(server)


def test_the_readme_quick_start_registers_an_agent_and_runs_a_command(tmp_path: Path) -> None:
    serve_block, operator_block = quickstart_blocks((REPO / "README.md").read_text())
    assert serve_block.strip() == "./scripts/serve", serve_block
    assert README_PORT in operator_block
    clone, env = fresh_clone(tmp_path / "tether"), reader_env()
    with serving(clone, serve_block.strip(), env) as (port, _):
        output = run_block(clone, operator_block.replace(README_PORT, port), env)
    assert re.search(r"registered as mi-[0-9a-f]{17} with http://127\.0\.0\.1:" + port, output)
    (printed_run,) = [line.strip() for line in output.splitlines()
                      if line.strip().endswith("tether-agent run --state-dir data/agent")]
    assert printed_run in operator_block, (printed_run, operator_block)  # the same line
    assert "load average" in output, output  # uptime, on the agent
    assert re.search(r"^lo\s+UNKNOWN\s+127\.0\.0\.1/8", output, re.M), output  # ip -brief addr
    assert (clone / "data" / "agent").is_dir()


def test_the_banner_of_scripts_serve_runs_as_pasted(tmp_path: Path) -> None:
    """The lines ``./scripts/serve`` prints "to register a first device", pasted in order
    as they are (comments too); the last, ``tether-agent run``, stays in the foreground,
    so it runs on its own until the agent says it is connected."""
    clone, env = fresh_clone(tmp_path / "tether"), reader_env()
    with serving(clone, "./scripts/serve", env) as (port, server_out):
        server_out.wait_for(r"tether-agent run")
        text = server_out.text()
        banner = text[text.index("To register a first device:"):].splitlines()[1:]
        lines = [line.strip() for line in banner if line.startswith("  ")]
        *setup, run = lines
        assert run.endswith("tether-agent run --state-dir data/agent"), lines
        output = run_block(clone, "\n".join(setup) + "\n", env)
        assert re.search(r"registered as mi-[0-9a-f]{17} with http://127\.0\.0\.1:" + port,
                         output)
        agent, agent_out = spawn(["bash", "-c", f"cd {shlex.quote(str(clone))} && {run}"], env)
        try:
            agent_out.wait_for(rf"connected to http://127\.0\.0\.1:{port} as mi-", timeout=30)
        finally:
            stop(agent)
