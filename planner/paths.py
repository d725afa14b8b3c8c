"""Every path the CLI reads or writes is ``stat``-ed here first, so odd files fail in one line.

A FIFO would block ``open`` forever, a device node reads without end, a socket cannot be opened, a
folder where a file belongs or an unsearchable folder raises deep inside a loader, a symlink loop
looks like a missing name (and earned a "did you mean" from the catalog). :func:`check_input` and
:func:`check_output` classify the path with one ``os.stat`` / ``os.lstat`` and raise an InputError
that says what it is ("is a FIFO, not a file", "permission denied", "symlink loop"), exit 2.

:func:`open_regular` opens with ``O_NONBLOCK`` and checks the opened descriptor again (``fstat``),
so a file swapped for a FIFO between the check and the open still cannot block.

:func:`atomic_write` writes through a temp file in the same folder and ``os.replace``; with
``force`` it replaces only a regular file. A symlink is refused, not written through: the link's
target may be anywhere (``/dev/…``), and a plan written over a link would change another file.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile

from planner.errors import InputError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symlink"),
          (stat.S_ISREG, "a regular file"))


def kind(mode: int) -> str:
    """'a regular file', 'a folder', 'a FIFO', 'a character device', … for an ``st_mode``."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def _stat_error(path: str, e: OSError) -> InputError:
    if e.errno == errno.ELOOP:
        return InputError(f"{path}: symlink loop (too many levels of symbolic links)")
    if e.errno == errno.ENOENT:
        try:
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return InputError(f"{path}: dangling symlink (its target does not exist)")
        except OSError:
            pass
        return InputError(f"{path}: no such file or folder")
    if e.errno == errno.EACCES:
        return InputError(f"{path}: permission denied (a folder on the way cannot be searched)")
    if e.errno == errno.ENOTDIR:
        return InputError(f"{path}: a part of the path is not a folder")
    return InputError(f"{path}: cannot stat ({e.strerror or e})")


def exists(path: str) -> bool:
    """Whether anything (even a dangling or looping symlink) is at ``path``."""
    try:
        os.lstat(path)
        return True
    except OSError as e:
        return e.errno not in (errno.ENOENT, errno.ENOTDIR)


def check_input(path: str, want: str = "file", what: str = "file") -> os.stat_result:
    """Stat ``path`` (following symlinks) and refuse what cannot be read as ``want``.

    ``want`` is "file", "folder" or "any" (a regular file or a folder). ``what`` names the file in
    the message ("plan file", "checkpoint"). Returns the stat result of a readable path.
    """
    try:
        st = os.stat(path)
    except OSError as e:
        raise _stat_error(path, e) from None
    mode = st.st_mode
    is_file, is_dir = stat.S_ISREG(mode), stat.S_ISDIR(mode)
    if want == "file" and not is_file:
        raise InputError(f"{path}: is {kind(mode)}, not a {what}" if is_dir else
                         f"{path}: is {kind(mode)}, not a file")
    if want == "folder" and not is_dir:
        raise InputError(f"{path}: is {kind(mode)}, not a folder")
    if want == "any" and not (is_file or is_dir):
        raise InputError(f"{path}: is {kind(mode)}, not a file or folder")
    if is_dir and not os.access(path, os.R_OK | os.X_OK):
        raise InputError(f"{path}: permission denied (this folder cannot be listed or searched)")
    if is_file and not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied (this file is not readable)")
    return st


def open_regular(path: str, what: str = "file"):
    """``open(path, 'rb')`` of a regular file that can never block: checked, opened non-blocking,
    and checked again on the descriptor."""
    check_input(path, "file", what)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as e:
        raise InputError(f"{path}: cannot open ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise InputError(f"{path}: is {kind(mode)}, not a file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str, limit: int, what: str = "file") -> bytes:
    """The whole of a regular file, refusing one larger than ``limit`` bytes."""
    with open_regular(path, what) as fh:
        try:
            raw = fh.read(limit + 1)
        except OSError as e:
            raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    if len(raw) > limit:
        raise InputError(f"{path}: more than {limit:,} bytes is too large for a {what}")
    return raw


def check_output(path: str, force: bool = False, flag: str = "--force") -> None:
    """Refuse an output path that cannot be written as a new regular file: a missing or
    unsearchable folder, an existing name without ``force``, and anything other than a regular file
    even with it (a FIFO, a device node, a socket, a folder, a symlink)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fst = os.stat(folder)
    except FileNotFoundError:
        raise InputError(f"{path}: cannot write; folder {folder} does not exist") from None
    except OSError as e:
        raise InputError(f"{path}: cannot write; folder {folder}: "
                         f"{str(_stat_error(folder, e)).split(': ', 1)[1]}") from None
    if not stat.S_ISDIR(fst.st_mode):
        raise InputError(f"{path}: cannot write; {folder} is {kind(fst.st_mode)}, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{path}: cannot write; permission denied in folder {folder}")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise _stat_error(path, e) from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a folder; give a file name")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: is {kind(st.st_mode)}; refusing to replace it (only a regular "
                         "file is ever overwritten)")
    if not force:
        raise InputError(f"{path} exists; pass {flag} to overwrite")


def atomic_write(path: str, data: str | bytes, force: bool = False, flag: str = "--force") -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder (fsync, then rename).

    Without ``force`` an existing name is never replaced (``link(2)`` fails if it appeared since the
    check); with it only a regular file is. The temp file never stays behind.
    """
    check_output(path, force, flag)
    folder = os.path.dirname(os.path.abspath(path))
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if force:
            check_output(path, True, flag)  # still a regular file (or gone) right before rename
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise InputError(f"{path} exists; pass {flag} to overwrite") from None
            except OSError:  # a filesystem without hard links
                if exists(path):
                    raise InputError(f"{path} exists; pass {flag} to overwrite") from None
                os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp is not None and exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def check_model_arg(model: str) -> None:
    """``--model`` names a path when anything is at it: check it (and a folder's config.json)
    before the loaders open it, so a FIFO, a loop or an unreadable folder is never taken for a
    catalog name."""
    if not isinstance(model, str) or not model.strip():
        return
    path = os.path.expanduser(model)
    if not exists(path):  # a catalog name (or a missing path: the resolver says which)
        return
    st = check_input(path, "any", "model file")
    if stat.S_ISDIR(st.st_mode):  # what the loaders and the runtime's ranks will open in it
        try:
            names = sorted(os.listdir(path))
        except OSError as e:
            raise InputError(f"{path}: cannot list this folder ({e.strerror or e})") from None
        for name in names:
            if name in ("config.json", "tokenizer.json") or name.endswith(
                    (".safetensors", ".gguf", ".index.json")):
                check_input(os.path.join(path, name), "file", name)


def resolve_model(model: str):
    """planner.sources.resolve after :func:`check_model_arg`: what every command's ``--model``
    goes through."""
    from planner.sources import resolve

    check_model_arg(model)
    return resolve(model)
