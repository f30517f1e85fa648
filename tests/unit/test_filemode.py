"""A copied file's mode, and the one place it is set: the rule, and a walk of ``src/``.

The rule (``tether.protocol.filemode.copied_mode``) is checked over every mode
and every umask. The walk holds the class closed: anywhere in ``src/``, the mode
a file is given (``chmod``, ``fchmod``, ``os.open``, ``mkdir``, ...) is a literal
within 0o777 or ``copied_mode(...)``; nothing copies a mode from another file
(``shutil.copymode`` and friends) or changes the umask outside ``tether.partfile``;
and the two ends of ``tether cp`` touch their partial files only through
``tether.partfile``. A device's or a request's mode can so never reach a file
unmasked, and a partial file can never be opened through a symlink, by a new
code path that forgot.
"""

from __future__ import annotations

import ast
import stat
from collections.abc import Iterator
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from tether.protocol.filemode import NEW_FILE_MODE, copied_mode, part_problem

SRC = Path(__file__).resolve().parents[2] / "src" / "tether"
# The two ends of a copy: every partial-file operation of theirs goes through tether.partfile.
COPY_ENDS = ("cli/copy.py", "agent/filehelper.py")
# The one module that may read the umask (set and set back where /proc cannot tell).
UMASK_READER = "partfile.py"

umasks = st.integers(0, 0o777)


@given(st.integers(0, 2**32), umasks)
@example(0o6777, 0o022)
@example(0o4755, 0)
@example(0o1777, 0o002)
def test_only_permission_bits_minus_the_umask_survive(sent: int, umask: int) -> None:
    mode = copied_mode(sent, umask)
    assert mode & ~0o777 == 0  # never setuid, setgid, sticky or anything higher
    assert mode & umask == 0
    assert mode == sent & 0o777 & ~umask  # and every other bit is kept
    assert stat.S_IMODE(mode) == mode


@given(st.one_of(st.none(), st.integers(max_value=-1), st.booleans(), st.text(),
                 st.floats()), umasks)
def test_no_usable_mode_means_a_new_files_mode(sent: object, umask: int) -> None:
    assert copied_mode(sent, umask) == NEW_FILE_MODE & ~umask  # type: ignore[arg-type]


def test_the_review_reproduction() -> None:
    assert copied_mode(0o6777, 0o022) == 0o755
    assert copied_mode(0o6777, 0o077) == 0o700


def test_only_a_regular_file_of_ours_with_one_link_is_a_part_file() -> None:
    me, other = 1000, 0
    assert part_problem(stat.S_IFREG | 0o600, me, 1, me) is None
    assert part_problem(stat.S_IFLNK | 0o777, me, 1, me) == "is a symbolic link"
    for kind in (stat.S_IFDIR, stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
        assert part_problem(kind | 0o600, me, 1, me) == "is not a regular file"
    assert "owned by uid 0" in (part_problem(stat.S_IFREG | 0o600, other, 1, me) or "")
    assert "2 links" in (part_problem(stat.S_IFREG | 0o600, me, 2, me) or "")


# -- the walk ------------------------------------------------------------------

# Calls that give a file a mode, and where the mode is when called as os.NAME(...) /
# as a method (Path.chmod(mode)), positionally; it may also be the keyword ``mode``.
MODE_SETTERS: dict[str, tuple[int | None, int | None]] = {
    "chmod": (1, 0), "lchmod": (1, 0), "fchmod": (1, 1), "fchmodat": (2, 2),
                "mkdir": (1, 0), "makedirs": (1, 1), "mknod": (1, 1), "mkfifo": (1, 1),
                "touch": (None, None)}  # by keyword only: the store has a touch() too
# Calls that carry a mode over from another file, setuid bits and all.
MODE_COPIERS = {"copymode", "copystat", "copy2", "copytree"}


def _name(func: ast.expr) -> str:
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""


def _on_os(func: ast.expr) -> bool:
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
        func.value.id == "os"


def _literal_modes(node: ast.expr) -> list[int] | None:
    """The int literals a mode expression can take, or None if it is computed."""
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return [node.value]
    if isinstance(node, ast.IfExp):
        body, orelse = _literal_modes(node.body), _literal_modes(node.orelse)
        return None if body is None or orelse is None else body + orelse
    return None


def _mode_problem(node: ast.expr) -> str | None:
    if isinstance(node, ast.Call) and _name(node.func) == "copied_mode":
        return None
    modes = _literal_modes(node)
    if modes is None:
        return f"the mode {ast.unparse(node)!r} is computed, not copied_mode(...)"
    high = [oct(m) for m in modes if m & ~0o777]
    return f"the mode {', '.join(high)} sets bits above 0o777" if high else None


def mode_problems(source: str, filename: str) -> Iterator[str]:
    """Each place in ``source`` that gives a file a mode it should not be able to."""
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name, where = _name(node.func), f"{filename}:{getattr(node, 'lineno', 0)}"
        mode: ast.expr | None = None
        if name in MODE_SETTERS or (name == "open" and _on_os(node.func)):
            index = 2 if name == "open" else MODE_SETTERS[name][0 if _on_os(node.func) else 1]
            if index is not None and len(node.args) > index:
                mode = node.args[index]
            mode = next((k.value for k in node.keywords if k.arg == "mode"), mode)
        if mode is not None and (problem := _mode_problem(mode)):
            yield f"{where}: {name}: {problem}"
        if name in MODE_COPIERS or (name == "copy" and _name(getattr(node.func, "value",
                                                                     node.func)) == "shutil"):
            yield f"{where}: {name} copies another file's mode (setuid bits and all)"
        if name == "umask" and _on_os(node.func) and not filename.endswith(UMASK_READER):
            yield f"{where}: only tether.partfile reads the umask; nothing changes it"


def test_no_file_in_src_gets_an_unmasked_or_copied_mode() -> None:
    problems = [p for path in sorted(SRC.rglob("*.py"))
                for p in mode_problems(path.read_text(), str(path.relative_to(SRC)))]
    assert problems == []


def test_the_walk_finds_what_the_review_found() -> None:
    """It would have caught the finding itself (copy.py's chmod of the device's mode)."""
    caught = {
        'os.chmod(part, done["mode"])': "computed",
        "os.fchmod(fd, mode)": "computed",
        "Path(p).chmod(opened.mode)": "computed",
        "os.chmod(p, 0o6755)": "above 0o777",
        "os.open(p, os.O_CREAT | os.O_WRONLY, 0o4700)": "above 0o777",
        "os.open(p, flags, mode=sent)": "computed",
        "p.mkdir(mode=request.mode)": "computed",
        "shutil.copymode(a, b)": "copies",
        "shutil.copy(a, b)": "copies",
        "os.umask(0)": "umask",
    }
    for line, words in caught.items():
        found = list(mode_problems(line, "x.py"))
        assert len(found) == 1 and words in found[0], (line, found)
    for fine in ("os.fchmod(fd, copied_mode(mode, current_umask()))",
                 "os.open(p, os.O_CREAT | os.O_WRONLY, 0o600 if private else 0o644)",
                 "os.chmod(d, 0o700)", "folder.mkdir(parents=True, exist_ok=True)",
                 "open(p, 'rb')", "shutil.copyfile(a, b)"):
        assert list(mode_problems(fine, "x.py")) == [], fine


# Touching a file by name: at the two ends of a copy, only tether.partfile may.
FILE_WRITERS = {"chmod", "fchmod", "replace", "rename", "unlink", "remove", "fdopen", "link",
                "symlink", "truncate", "write_bytes", "write_text", "touch"}


def _writes_a_file(node: ast.Call) -> bool:
    name = _name(node.func)
    if name in FILE_WRITERS or (name == "open" and _on_os(node.func)):
        return True
    if name == "open" and isinstance(node.func, ast.Name):  # the builtin
        mode = node.args[1] if len(node.args) > 1 else \
            next((k.value for k in node.keywords if k.arg == "mode"), None)
        return not (isinstance(mode, ast.Constant) and mode.value in ("rb", "r"))
    return False


def test_the_ends_of_a_copy_write_files_only_through_partfile() -> None:
    for relative in COPY_ENDS:
        source = (SRC / relative).read_text()
        tree = ast.parse(source)
        writes = [f"{relative}:{n.lineno}: {ast.unparse(n)}" for n in ast.walk(tree)
                  if isinstance(n, ast.Call) and _writes_a_file(n)]
        assert writes == []
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    and n.module == "tether.partfile" for a in n.names}
        assert "PartFile" in imported, relative
