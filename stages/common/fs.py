"""Filesystem guards for names that come from outside (API fields, tree entries, file names in a mirror).

Why: a path joined from untrusted parts can leave its output folder (`..`, an absolute part, a symlink on the
way), and a "file" can be a FIFO or a device that blocks the reader forever. Every stage writes through
`resolve_under` and reads outside input through `read_regular_file`.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class UnsafePathError(ValueError):
    """A path that would leave its root folder, or that is not a regular file where one is required."""


def resolve_under(root: str | Path, *parts: str) -> Path:
    """root/parts..., resolved, or UnsafePathError when the result is not inside root (resolved too)."""
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"{'/'.join(parts)!r} resolves outside {base}")
    return target


def read_regular_file(path: str | Path, max_bytes: int | None = None, follow_symlinks: bool = False) -> bytes:
    """The bytes of a regular file, never blocking on a FIFO or device; a final symlink is refused unless
    `follow_symlinks` (a folder the user named, e.g. a replay dir of links into a corpus)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0))
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # what O_NOFOLLOW answers for a link
            raise UnsafePathError(f"{path} is a symlink") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePathError(f"{path} is not a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise UnsafePathError(f"{path} is over the {max_bytes}-byte cap")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def is_regular_file(path: str | Path) -> bool:
    """lstat-based: a symlink (even to a regular file), FIFO, socket or device is not."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def decodable_name(name: str) -> bool:
    """A name os.listdir decoded with surrogateescape (invalid UTF-8 on disk) cannot be written to JSON."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
