"""Path safety for the MemoryStore: lexical checks, then fd-relative, no-follow file access.

Two layers keep every operation inside the memory root:

1. :func:`normalize_rel_path` checks the text of a path (type, NUL, absolute,
   Windows drive and backslash forms, control characters, reserved temp names,
   lengths) and folds ``.`` and ``..`` *lexically*. A ``..`` that would climb
   above the root raises :class:`MemoryStorePathError`; one that stays inside
   (``a/../b.md``) is allowed.
2. :func:`locate` walks the normalized parts from an fd on the root, one
   component at a time, opening each directory with
   ``O_DIRECTORY | O_NOFOLLOW`` relative to its parent's fd. Nothing is ever
   resolved by the kernel from a path string, so a symlink swapped in between a
   check and a use makes the open fail instead of leading elsewhere.

The same fd discipline covers everything below the lookup: :func:`read_bytes`
opens the final name with ``O_NOFOLLOW`` relative to its directory fd,
:func:`write_temp` creates its temp file with ``O_CREAT | O_EXCL |
O_NOFOLLOW`` and :func:`commit_temp` renames with ``src_dir_fd``/``dst_dir_fd``, and
:func:`iter_tree` (used by glob, grep and the temp-file sweep) descends only
through real directories. :func:`glob_match` matches glob segments.

Symlink rule: a symlink met on the way (or as the final component) is followed
only if its target, folded lexically against the real directories already
walked, stays inside the root; the walk then restarts from the root with the
target spelled out. Targets outside the root raise
:class:`MemoryStorePathError`. Because every directory already walked was
opened with ``O_NOFOLLOW``, folding ``..`` lexically against them is exact.

All functions here are pure or work only on fds they are given or open
themselves; they hold no state and are safe to call from any thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import PurePosixPath

import structlog

from familiar_connect.errors import (
    MemoryStoreError,
    MemoryStorePathError,
    MemoryStoreSizeLimitError,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_NAME_BYTES",
    "MAX_PATH_CHARS",
    "MAX_SYMLINK_HOPS",
    "Located",
    "count_entries",
    "glob_could_match_under",
    "glob_match",
    "iter_tree",
    "scan_dir",
    "is_temp_name",
    "locate",
    "make_temp_name",
    "normalize_glob",
    "normalize_rel_path",
    "open_root",
    "read_bytes",
    "commit_temp",
    "discard_temp",
    "write_temp",
]

log = structlog.get_logger(__name__)

MAX_PATH_CHARS = 4096
"""Longest accepted path or glob pattern, in characters."""
MAX_NAME_BYTES = 255
"""Longest accepted single name, in UTF-8 bytes (NAME_MAX on Linux and macOS)."""
MAX_DEPTH = 64
"""Deepest accepted nesting below the root, in path components."""
MAX_SYMLINK_HOPS = 32
"""Symlinks followed in one lookup before giving up (cycles end here)."""

_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_CONTROL_RE = re.compile(r"[\x01-\x1f\x7f]")
# Our own temp files: ".<name>.tmp-<16 hex>". Users may not create names of
# this shape, so the start-up sweep can never delete a real note.
_TEMP_RE = re.compile(r"^\..*\.tmp-[0-9a-f]{16}$", re.DOTALL)
_TEMP_PREFIX_BYTES = 200

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_CHUNK_BYTES = 64 * 1024


def is_temp_name(name: str) -> bool:
    """Return whether ``name`` has the shape of one of the store's temp files."""
    return _TEMP_RE.match(name) is not None


def make_temp_name(name: str) -> str:
    """Return a fresh temp-file name for an atomic write of ``name``.

    The name keeps a readable prefix of the target (cut to fit NAME_MAX) and
    ends with 64 random bits, so ``O_EXCL`` creation practically never collides.
    """
    prefix = name.encode("utf-8")[:_TEMP_PREFIX_BYTES].decode("utf-8", "ignore")
    return f".{prefix}.tmp-{secrets.token_hex(8)}"


def _check_text(text: object, *, what: str) -> str:
    if not isinstance(text, str):
        raise MemoryStoreError(f"{what} must be a string, not {type(text).__name__}")
    if "\x00" in text:
        raise MemoryStorePathError(f"{what} contains a NUL byte")
    if len(text) > MAX_PATH_CHARS:
        raise MemoryStoreError(f"{what} is longer than {MAX_PATH_CHARS} characters")
    if text.startswith("/"):
        raise MemoryStorePathError(f"{what} is absolute; use a path relative to the memory root")
    if "\\" in text:
        raise MemoryStorePathError(f"{what} contains a backslash; use POSIX '/' separators")
    if _DRIVE_RE.match(text):
        raise MemoryStorePathError(f"{what} starts with a Windows drive ({text[:2]!r})")
    return text


def _check_segment(segment: str, *, what: str) -> None:
    if _CONTROL_RE.search(segment):
        raise MemoryStoreError(f"{what} contains a control character")
    try:
        encoded = segment.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MemoryStoreError(f"{what} is not valid Unicode text") from exc
    if len(encoded) > MAX_NAME_BYTES:
        raise MemoryStoreError(f"{what} has a name longer than {MAX_NAME_BYTES} bytes")
    if is_temp_name(segment):
        raise MemoryStoreError(f"{what} uses a name reserved for the store's temp files")


def _fold(segments: list[str], *, what: str, base: tuple[str, ...] = ()) -> tuple[str, ...]:
    parts = list(base)
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                raise MemoryStorePathError(f"{what} leaves the memory root via '..'")
            parts.pop()
            continue
        _check_segment(segment, what=what)
        parts.append(segment)
        if len(parts) > MAX_DEPTH:
            raise MemoryStoreError(f"{what} is nested deeper than {MAX_DEPTH} levels")
    return tuple(parts)


def normalize_rel_path(rel_path: object, *, what: str = "path") -> tuple[str, ...]:
    """Validate a root-relative POSIX path and fold ``.``/``..`` lexically.

    Args:
        rel_path: the path as given by a caller (often the model).
        what: how to name the path in error messages.

    Returns:
        The path's components; ``()`` means the root itself.

    Raises:
        MemoryStorePathError: NUL byte, absolute path, drive or backslash form,
            or a ``..`` that climbs above the root.
        MemoryStoreError: not a string, too long, too deep, a control character,
            invalid Unicode, or a name reserved for temp files.
    """
    text = _check_text(rel_path, what=what)
    return _fold(text.split("/"), what=what)


def normalize_glob(pattern: object) -> tuple[str, ...]:
    """Validate a glob pattern with the same rules as a path and fold it.

    ``..`` segments are folded before matching, so ``*/../../x`` escapes (and
    raises) exactly like the path it spells. Wildcards stay in the segments.

    Raises:
        MemoryStorePathError: as :func:`normalize_rel_path`.
        MemoryStoreError: as :func:`normalize_rel_path`.
    """
    return normalize_rel_path(pattern, what="glob pattern")


def _symlink_target_parts(
    target: str, *, base: tuple[str, ...], root: PurePosixPath
) -> tuple[str, ...]:
    what = "symlink target"
    if "\x00" in target or "\\" in target or _DRIVE_RE.match(target):
        raise MemoryStorePathError("a symlink on the path has a target the store cannot follow")
    if target.startswith("/"):
        folded = PurePosixPath(os.path.normpath(target))
        try:
            relative = folded.relative_to(root)
        except ValueError as exc:
            raise MemoryStorePathError(
                "a symlink on the path leads outside the memory root"
            ) from exc
        return _fold(list(relative.parts), what=what)
    try:
        return _fold(target.split("/"), what=what, base=base)
    except MemoryStorePathError as exc:
        raise MemoryStorePathError("a symlink on the path leads outside the memory root") from exc


@dataclass(slots=True)
class Located:
    """Where a path landed: an open fd on its real parent directory, and the final name.

    Attributes:
        parent_fd: fd of the directory holding ``name``, or of the root itself
            when ``name`` is ``None``. The caller owns it and must close it.
        name: the final component, or ``None`` for the root.
        parts: the canonical (symlink-free) components of the path.
        st: ``lstat`` of the final component, or ``None`` if it does not exist.
    """

    parent_fd: int
    name: str | None
    parts: tuple[str, ...]
    st: os.stat_result | None

    @property
    def rel_path(self) -> str:
        """The canonical path as a POSIX string ("" for the root)."""
        return "/".join(self.parts)


def open_root(root: str | os.PathLike[str]) -> int:
    """Open the memory root as a directory fd; the caller closes it."""
    try:
        return os.open(root, _DIR_FLAGS)
    except OSError as exc:
        raise MemoryStoreError("the memory root cannot be opened") from exc


def count_entries(dir_fd: int) -> int:
    """Count the entries of a directory fd, not counting the store's temp files."""
    return sum(1 for name in os.listdir(dir_fd) if not is_temp_name(name))


def _make_dir(dir_fd: int, name: str, *, max_entries: int) -> None:
    if count_entries(dir_fd) >= max_entries:
        raise MemoryStoreSizeLimitError(
            f"directory already holds {max_entries} entries; cannot create {name!r}"
        )
    try:
        os.mkdir(name, 0o700, dir_fd=dir_fd)
    except FileExistsError:
        return  # another writer made it first; the no-follow open below decides
    os.fsync(dir_fd)


def locate(
    root: PurePosixPath,
    parts: tuple[str, ...],
    *,
    create_dirs: bool = False,
    max_entries_per_dir: int = 0,
) -> Located:
    """Walk ``parts`` from the root without letting the kernel follow any symlink.

    Args:
        root: the resolved memory root.
        parts: components from :func:`normalize_rel_path`.
        create_dirs: make missing intermediate directories (mode 0700), each
            subject to ``max_entries_per_dir`` in its parent.
        max_entries_per_dir: entry cap checked before creating a directory.

    Returns:
        A :class:`Located` whose ``parent_fd`` the caller must close.

    Raises:
        MemoryStorePathError: a symlink on the way leads outside the root, or
            symlinks loop.
        MemoryStoreError: an intermediate component is missing (and
            ``create_dirs`` is false) or is not a directory.
        MemoryStoreSizeLimitError: creating a directory would exceed the cap.
    """
    hops = 0
    pending = list(parts)
    walked: list[str] = []
    fd = open_root(root)
    try:
        while pending:
            name = pending[0]
            is_last = len(pending) == 1
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if is_last:
                    located = Located(fd, name, (*walked, name), None)
                    fd = -1
                    return located
                if not create_dirs:
                    raise MemoryStoreError(
                        f"not found: {'/'.join((*walked, name))!r} does not exist"
                    ) from None
                _make_dir(fd, name, max_entries=max_entries_per_dir)
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise MemoryStorePathError("too many symlinks on the path (a loop?)")
                target = os.readlink(name, dir_fd=fd)
                followed = _symlink_target_parts(target, base=tuple(walked), root=root)
                pending = [*followed, *pending[1:]]
                walked = []
                os.close(fd)
                fd = -1
                fd = open_root(root)
                continue
            if is_last:
                located = Located(fd, name, (*walked, name), st)
                fd = -1
                return located
            if not stat.S_ISDIR(st.st_mode):
                raise MemoryStoreError(f"not a directory: {'/'.join((*walked, name))!r}")
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP, errno.ENOENT):
                    # Swapped between the lstat and the open: look again, with
                    # the hop budget bounding how often that can happen.
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise MemoryStorePathError("the path kept changing during lookup") from exc
                    continue
                raise
            os.close(fd)
            fd = child
            walked.append(name)
            pending.pop(0)
        located = Located(fd, None, (), os.fstat(fd))
        fd = -1
        return located
    except OSError as exc:
        raise MemoryStoreError(f"cannot look up {'/'.join(parts)!r}: {exc.strerror}") from exc
    finally:
        if fd >= 0:
            os.close(fd)


def read_bytes(dir_fd: int, name: str, rel_path: str, *, max_bytes: int) -> bytes:
    """Read a regular file relative to ``dir_fd`` without following a final symlink.

    ``O_NONBLOCK`` keeps a FIFO swapped in from blocking the open; the type and
    size are checked on the open fd, and at most ``max_bytes + 1`` bytes are read.

    Raises:
        MemoryStorePathError: the name became a symlink or vanished since lookup.
        MemoryStoreSizeLimitError: the file is over ``max_bytes``.
        MemoryStoreError: a directory, not a regular file, or an OS failure.
    """
    cap = max_bytes
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT):
            raise MemoryStorePathError(f"{rel_path!r} changed while it was opened") from exc
        raise MemoryStoreError(f"cannot open {rel_path!r}: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise MemoryStoreError(f"is a directory: {rel_path!r}")
        if not stat.S_ISREG(st.st_mode):
            raise MemoryStoreError(f"not a regular file: {rel_path!r}")
        if st.st_size > cap:
            raise MemoryStoreSizeLimitError(
                f"{rel_path!r} is {st.st_size} bytes, over the {cap}-byte file cap"
            )
        chunks: list[bytes] = []
        total = 0
        while total <= cap:
            chunk = os.read(fd, min(_READ_CHUNK_BYTES, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > cap:
            raise MemoryStoreSizeLimitError(f"{rel_path!r} grew over the {cap}-byte file cap")
        return b"".join(chunks)
    except OSError as exc:
        raise MemoryStoreError(f"cannot read {rel_path!r}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def write_temp(dir_fd: int, name: str, data: bytes, rel_path: str) -> str:
    """Write ``data`` to a fresh temp file next to ``name`` and fsync it; return the temp name.

    The temp file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and removed on
    any failure. Nothing visible changes until :func:`commit_temp` renames it.

    Raises:
        MemoryStoreError: an OS failure.
    """
    tmp = make_temp_name(name)
    done = False
    try:
        fd = os.open(tmp, _TEMP_FLAGS, 0o600, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            written = 0
            while written < len(data):
                written += os.write(fd, view[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        done = True
    except OSError as exc:
        raise MemoryStoreError(f"cannot write {rel_path!r}: {exc.strerror}") from exc
    finally:
        if not done:
            discard_temp(dir_fd, tmp)
    return tmp


def commit_temp(dir_fd: int, tmp: str, name: str, rel_path: str) -> None:
    """Rename the temp file over ``name`` and fsync the directory.

    A symlink swapped in at ``name`` is replaced itself, never followed. On
    failure the temp file is removed and the target is untouched.

    Raises:
        MemoryStoreError: the target is a directory, or an OS failure.
    """
    try:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        discard_temp(dir_fd, tmp)
        if exc.errno == errno.EISDIR:
            raise MemoryStoreError(f"is a directory: {rel_path!r}") from exc
        raise MemoryStoreError(f"cannot write {rel_path!r}: {exc.strerror}") from exc
    try:
        os.fsync(dir_fd)
    except OSError:
        # The rename is done; only its durability across power loss is in doubt.
        log.warning("memory_dir_fsync_failed", rel_path=rel_path)


def discard_temp(dir_fd: int, tmp: str) -> None:
    """Remove a temp file if it is still there (never raises)."""
    with contextlib.suppress(OSError):
        os.unlink(tmp, dir_fd=dir_fd)


def _walk_sort_key(name: str, st: os.stat_result) -> str:
    # Sorting directories as "name/" makes a depth-first walk emit paths in
    # plain string order ("a.md" < "a/b.md"), so capped results are the first N.
    return name + "/" if stat.S_ISDIR(st.st_mode) else name


def scan_dir(
    dir_fd: int, *, include_temp: bool = False, limit: int | None = None
) -> list[tuple[str, os.stat_result]]:
    """List ``(name, lstat)`` of a directory fd; stops past ``limit`` entries."""
    entries: list[tuple[str, os.stat_result]] = []
    with os.scandir(dir_fd) as it:
        for entry in it:
            if not include_temp and is_temp_name(entry.name):
                continue
            if limit is not None and len(entries) > limit:
                break
            try:
                entries.append((entry.name, entry.stat(follow_symlinks=False)))
            except OSError:
                continue  # removed while we listed
    return entries


def iter_tree(
    dir_fd: int,
    parts: tuple[str, ...],
    *,
    descend: Callable[[tuple[str, ...]], bool],
    include_temp: bool = False,
    depth: int = 0,
) -> Iterator[tuple[int, str, tuple[str, ...], os.stat_result]]:
    """Depth-first walk yielding ``(dir_fd, name, parts, lstat)``; never follows symlinks.

    ``dir_fd`` is valid only until the next item. Bounded by :data:`MAX_DEPTH`.
    """
    entries = sorted(scan_dir(dir_fd, include_temp=include_temp), key=lambda e: _walk_sort_key(*e))
    for name, st in entries:
        child_parts = (*parts, name)
        yield dir_fd, name, child_parts, st
        if not stat.S_ISDIR(st.st_mode) or depth + 1 >= MAX_DEPTH or not descend(child_parts):
            continue
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue  # replaced or removed since the scan
        try:
            yield from iter_tree(
                child, child_parts, descend=descend, include_temp=include_temp, depth=depth + 1
            )
        finally:
            os.close(child)


def glob_match(patterns: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Match path parts against glob segments; ``**`` spans zero or more parts."""
    # reachable[i]: the first i pattern segments can consume the parts seen so far.
    reachable = [True] + [False] * len(patterns)
    for i, pattern in enumerate(patterns):
        if pattern == "**" and reachable[i]:
            reachable[i + 1] = True
    for part in parts:
        nxt = [False] * (len(patterns) + 1)
        for i, pattern in enumerate(patterns):
            if not reachable[i]:
                continue
            if pattern == "**":
                nxt[i] = True
                nxt[i + 1] = True
            elif fnmatchcase(part, pattern):
                nxt[i + 1] = True
        for i, pattern in enumerate(patterns):
            if pattern == "**" and nxt[i]:
                nxt[i + 1] = True
        reachable = nxt
    return reachable[-1]


def glob_could_match_under(patterns: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether a directory at ``parts`` could hold a match (prunes the walk)."""
    if "**" in patterns:
        return True
    if len(parts) >= len(patterns):
        return False
    return all(fnmatchcase(part, pat) for part, pat in zip(parts, patterns, strict=False))
