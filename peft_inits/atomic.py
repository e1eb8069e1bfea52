"""Crash-safe writes: a file through a temporary file + rename, a whole directory through a temporary sibling + renames.

A directory swap (`replace_directory`) never leaves a mix of two versions:

1. the new version is written completely into `.<name>.tmp-XXXX` (a sibling, so the renames stay on one file system)
   and flushed to disk;
2. the current version is renamed to `.<name>.old-XXXX`;
3. the new one is renamed to `<name>`; then the old one is deleted.

A crash before step 2 leaves the old version in place (plus a stale temp directory); a crash between 2 and 3 leaves
no `<name>` but a complete `.<name>.old-XXXX`, which `recover_directory` (called by every save and by
`checkpoint.load_adapter`) renames back; a crash after 3 leaves the new version (plus a stale old copy). Stale temp
and old copies are removed by the next save. Files are created with the permissions the user's umask gives
(`tempfile.mkstemp`/`mkdtemp` alone would leave 0600/0700).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

TMP_FILE_SUFFIX = ".tmp"
_TMP_DIR = ".tmp-"
_OLD_DIR = ".old-"


def umask() -> int:
    """The process umask (read from /proc where possible, so it is never changed, even briefly)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync(path: str | os.PathLike) -> None:
    """Flush a file or directory to disk (directories: best effort, some platforms cannot open them)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def stale_temp_files(path: Path) -> list[Path]:
    """Temporary files a killed `atomic_write(path, ...)` left beside `path`."""
    return sorted(path.parent.glob(f".{path.name}.*{TMP_FILE_SUFFIX}"))


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Run `write(tmp_path)` and rename the result over `path`, so a crash never leaves a half-written file.

    The file gets mode 0666 & ~umask, like any file the user creates; temp files of earlier killed writes of the same
    path are removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_temp_files(path):
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_FILE_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _siblings(directory: Path, mark: str) -> list[Path]:
    """`.<name>.tmp-*` or `.<name>.old-*` entries beside `directory`, oldest first."""
    found = [p for p in directory.parent.glob(f".{directory.name}{mark}*") if p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: p.stat().st_mtime)


def recover_directory(directory: str | os.PathLike) -> bool:
    """Put back the previous version of `directory` if a crash interrupted a swap after setting it aside.

    Returns True when something was restored (with a warning); False when there was nothing to do.
    """
    directory = Path(directory)
    if directory.exists() or directory.is_symlink():
        return False
    olds = _siblings(directory, _OLD_DIR)
    if not olds:
        return False
    if len(olds) > 1:  # saves remove old copies before the next swap, so this is not ours to guess
        names = ", ".join(p.name for p in olds)
        raise ValueError(f"{directory} is missing and several set-aside versions exist ({names}); rename one to it")
    os.rename(olds[-1], directory)
    _fsync(directory.parent)
    warnings.warn(
        f"{directory}: a save was interrupted while swapping versions; restored the previous version "
        f"from {olds[-1].name}",
        stacklevel=2,
    )
    return True


def clean_stale(directory: str | os.PathLike) -> list[Path]:
    """Remove what killed saves of `directory` left behind (temp and set-aside copies, temp files inside it).

    Call only after `recover_directory`, so a set-aside previous version is restored rather than deleted.
    Returns the removed paths.
    """
    directory = Path(directory)
    removed = [*_siblings(directory, _TMP_DIR), *_siblings(directory, _OLD_DIR)]
    if directory.is_dir():
        removed += [p for p in directory.glob(f".*{TMP_FILE_SUFFIX}") if p.is_file()]
    for path in removed:  # errors propagate: at most one set-aside copy may exist when the next swap starts
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    return removed


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _carry_over(old: Path, new: Path) -> None:
    """Keep the user's own files (e.g. a `meta.json` label) that the new version does not write itself."""
    for entry in old.iterdir():
        target = new / entry.name
        if target.exists() or target.is_symlink() or (entry.name.startswith(".") and entry.name.endswith(".tmp")):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            shutil.copytree(entry, target, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(target))


@contextlib.contextmanager
def replace_directory(directory: str | os.PathLike, keep_other_files: bool = True) -> Iterator[Path]:
    """Yield an empty temporary directory; when the block exits normally, it replaces `directory` as a whole.

    If the block raises, `directory` is left exactly as it was and the temporary directory is removed. With
    `keep_other_files`, files of the current version that the new one does not contain are carried over.
    A `directory` that is a symlink is resolved, so the link keeps pointing at the (new) contents.
    """
    directory = Path(directory)
    if directory.is_symlink():
        directory = directory.resolve()
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory} exists and is not a directory; refusing to replace it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(directory)
    clean_stale(directory)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}{_TMP_DIR}", dir=directory.parent))
    try:
        os.chmod(tmp, 0o777 & ~umask())
        yield tmp
        mode = 0o666 & ~umask()
        for entry in tmp.iterdir():  # some writers (safetensors) create 0600 files whatever the umask
            if entry.is_file() and not entry.is_symlink():
                os.chmod(entry, mode)
                _fsync(entry)
        if keep_other_files and directory.is_dir():
            _carry_over(directory, tmp)
        _fsync(tmp)
        if directory.exists():
            old = directory.parent / f".{directory.name}{_OLD_DIR}{secrets.token_hex(4)}"
            os.rename(directory, old)
            try:
                os.rename(tmp, directory)
            except BaseException:
                os.rename(old, directory)
                raise
            _fsync(directory.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, directory)
            _fsync(directory.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
