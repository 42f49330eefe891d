"""The memory audit log: one hash-chained JSON line per successful write, kept on disk.

Every write or append the :class:`~familiar_connect.memory.store.MemoryStore`
makes is recorded as one line of JSON in a file that lives *outside* the memory
root (so the model can never rewrite its own history)::

    {"seq": 7, "timestamp": "2025-01-02T03:04:05.678901+00:00",
     "rel_path": "people/alice.md", "operation": "append", "bytes_written": 42,
     "source": "memory_writer", "context": {"conversation": "discord:123"},
     "sha256": "<sha256 of the whole file after the write>",
     "prev_hash": "<hash of record 6>", "hash": "<sha256 of this record>"}

``hash`` is the SHA-256 of the record without its ``hash`` key, serialised as
canonical JSON (sorted keys, ``","``/``":"`` separators, ASCII escapes, UTF-8).
``prev_hash`` of the first record is 64 zeros. Editing, deleting, inserting
or reordering a record therefore breaks a hash or a link, and
:func:`verify_audit` names the first place it happens. ``sha256`` ties each
record to file content: a file whose current hash differs from its last record
was changed outside the store.

Lines are appended with ``O_APPEND`` and fsynced. A crash can leave a torn last
line; loading tolerates it and :func:`verify_audit` reports it. The store, the
one writer, calls :func:`quarantine_torn_tail` when it opens the log: the
fragment is moved to ``<log>.torn`` (kept as evidence, never deleted) and the
log is cut back to its last complete record, so the chain continues cleanly
and ``verify`` passes again after a crash.
One process appends to a given log at a time (one process per familiar).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog

from familiar_connect.errors import AuditLogError
from familiar_connect.memory._paths import is_temp_name

__all__ = [
    "DELETED_SHA256",
    "GENESIS_HASH",
    "AuditEntry",
    "AuditLog",
    "AuditProblem",
    "AuditVerification",
    "format_audit_entries",
    "quarantine_torn_tail",
    "record_hash",
    "verify_audit",
]

log = structlog.get_logger(__name__)

GENESIS_HASH = "0" * 64
"""``prev_hash`` of the first record in a log."""

_MAX_LINE_BYTES = 64 * 1024
_HASH_CHUNK_BYTES = 1024 * 1024
_HEX = frozenset("0123456789abcdef")
_OPERATIONS = ("write", "append", "delete")

Operation = Literal["write", "append", "delete"]

DELETED_SHA256 = "0" * 64
"""``sha256`` of a ``delete`` record: the file no longer exists."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One audit record.

    Attributes:
        rel_path: canonical POSIX path of the file, relative to the memory root.
        operation: ``"write"`` or ``"append"``.
        bytes_written: UTF-8 bytes written or appended by this operation (not the file size).
        source: who wrote, e.g. ``"memory_writer"``, ``"tool:write_note"``, ``"operator"``.
        timestamp: aware UTC wall-clock time of the write.
        seq: 1-based position in the chain.
        sha256: SHA-256 (hex) of the whole file content after the write.
        prev_hash: ``hash`` of the previous record (:data:`GENESIS_HASH` for the first).
        hash: SHA-256 (hex) of this record's canonical JSON without ``hash``.
        context: sorted ``(key, value)`` pairs, e.g. conversation and author.
    """

    rel_path: str
    operation: Operation
    bytes_written: int
    source: str
    timestamp: datetime
    seq: int = 0
    sha256: str = ""
    prev_hash: str = GENESIS_HASH
    hash: str = ""
    context: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """One thing :func:`verify_audit` found wrong, in structured form.

    ``kind`` is one of ``torn_tail``, ``unreadable_record``, ``hash_mismatch``,
    ``chain_broken``, ``seq_gap``, ``file_changed``, ``file_missing``,
    ``not_in_audit_log``, ``file_unreadable``.
    """

    kind: str
    message: str
    line_number: int | None = None
    seq: int | None = None
    rel_path: str | None = None


@dataclass(frozen=True, slots=True)
class AuditVerification:
    """Result of :func:`verify_audit`.

    Attributes:
        ok: true when no problem was found.
        records_checked: readable records walked through the chain.
        problems: one readable line per problem, in log order, then files by path.
        issues: the same problems in structured form.
    """

    ok: bool
    records_checked: int
    problems: list[str]
    issues: tuple[AuditProblem, ...] = field(default=())

    @property
    def first_problem(self) -> str | None:
        """The first problem found, or ``None`` when the log is clean."""
        return self.problems[0] if self.problems else None


def record_hash(record: Mapping[str, Any]) -> str:
    """Return the chain hash of ``record`` (any ``hash`` key in it is ignored)."""
    body = {key: value for key, value in record.items() if key != "hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_record(raw: bytes) -> tuple[dict[str, Any], AuditEntry] | None:
    """Parse one line into (raw record, entry), or ``None`` if it is not a valid record."""
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    context = record.get("context", {})
    checks = (
        _is_int(record.get("seq")) and record["seq"] >= 1,
        isinstance(record.get("timestamp"), str),
        isinstance(record.get("rel_path"), str),
        record.get("operation") in _OPERATIONS,
        _is_int(record.get("bytes_written")) and record["bytes_written"] >= 0,
        isinstance(record.get("source"), str),
        isinstance(context, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in context.items()),
        _is_hex64(record.get("sha256")),
        _is_hex64(record.get("prev_hash")),
        _is_hex64(record.get("hash")),
    )
    if not all(checks):
        return None
    try:
        timestamp = datetime.fromisoformat(record["timestamp"])
    except ValueError:
        return None
    if timestamp.tzinfo is None:
        return None
    entry = AuditEntry(
        rel_path=record["rel_path"],
        operation=record["operation"],
        bytes_written=record["bytes_written"],
        source=record["source"],
        timestamp=timestamp,
        seq=record["seq"],
        sha256=record["sha256"],
        prev_hash=record["prev_hash"],
        hash=record["hash"],
        context=tuple(sorted(context.items())),
    )
    return record, entry


def _iter_lines(path: Path) -> Iterator[tuple[int, bytes, bool]]:
    """Yield ``(line_number, line, complete)`` with every line read in bounded pieces.

    Lines longer than the record cap are yielded truncated (they never parse).
    A missing file yields nothing.
    """
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise AuditLogError(f"cannot read the audit log: {exc.strerror}") from exc
    with handle:
        line_number = 0
        while True:
            try:
                line = handle.readline(_MAX_LINE_BYTES + 1)
            except OSError as exc:
                raise AuditLogError(f"cannot read the audit log: {exc.strerror}") from exc
            if not line:
                return
            line_number += 1
            if len(line) > _MAX_LINE_BYTES and not line.endswith(b"\n"):
                # Skip the rest of an over-long line so it counts as one line.
                rest = line
                while rest and not rest.endswith(b"\n"):
                    rest = handle.readline(_MAX_LINE_BYTES)
                yield line_number, line, bool(rest)
                continue
            yield line_number, line, line.endswith(b"\n")


def quarantine_torn_tail(path: str | os.PathLike[str]) -> bytes | None:
    """Move an incomplete last line of the log to ``<log>.torn``; return it, or None.

    A last line that lacks only its newline but parses as a record is kept and
    completed instead. Only the single writing process may call this, before
    it appends (the store does so when it opens).

    Raises:
        AuditLogError: the log cannot be read or repaired.
    """
    log_path = Path(path)
    try:
        with log_path.open("r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return None
            window = min(size, _MAX_LINE_BYTES + 1)
            handle.seek(size - window)
            tail = handle.read(window)
            if tail.endswith(b"\n"):
                return None
            cut = tail.rfind(b"\n") + 1
            fragment = tail[cut:]
            if _parse_record(fragment) is not None:
                handle.seek(0, os.SEEK_END)
                handle.write(b"\n")
                handle.flush()
                os.fsync(handle.fileno())
                return None
            torn_path = log_path.with_name(log_path.name + ".torn")
            fd = os.open(torn_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, fragment + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)
            handle.truncate(size - window + cut)
            handle.flush()
            os.fsync(handle.fileno())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditLogError(f"cannot repair the audit log: {exc.strerror}") from exc
    log.warning(
        "audit_log_torn_tail_quarantined",
        path=str(log_path),
        torn_bytes=len(fragment),
        moved_to=str(torn_path),
    )
    return fragment


class AuditLog:
    """Append-only, hash-chained audit log stored as JSON lines.

    Construction reads the existing file (if any) to continue the chain; it
    never creates or modifies the file. Unreadable lines (a torn tail from a
    crash, or damage) are skipped on load, left in place, and reported by
    :func:`verify_audit`.

    Thread-safety: :meth:`append` and :meth:`entries` may be called from any
    thread; appends are serialised by an internal lock. Only one process may
    append to a given file.

    Args:
        path: the JSON-lines file. Its parent directory must exist before the
            first append.
        max_entries_in_memory: how many of the most recent records
            :meth:`entries` keeps (older ones stay on disk).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_entries_in_memory: int = 100_000
    ) -> None:
        if max_entries_in_memory < 1:
            raise AuditLogError("max_entries_in_memory must be at least 1")
        self._path = Path(path)
        self._lock = threading.Lock()
        self._entries: deque[AuditEntry] = deque(maxlen=max_entries_in_memory)
        self._last_hash = GENESIS_HASH
        self._last_seq = 0
        self._needs_newline = False
        skipped = 0
        for _, raw, complete in _iter_lines(self._path):
            self._needs_newline = not complete
            if not raw.strip():
                continue
            parsed = _parse_record(raw)
            if parsed is None:
                skipped += 1
                continue
            _, entry = parsed
            self._entries.append(entry)
            self._last_hash = entry.hash
            self._last_seq = entry.seq
        if skipped:
            log.warning("audit_log_unreadable_lines_skipped", path=str(self._path), lines=skipped)

    @property
    def path(self) -> Path:
        """The JSON-lines file."""
        return self._path

    @property
    def last_hash(self) -> str:
        """``hash`` of the newest record (:data:`GENESIS_HASH` when empty)."""
        with self._lock:
            return self._last_hash

    def entries(self) -> list[AuditEntry]:
        """Return a copy of the records in memory, oldest first."""
        with self._lock:
            return list(self._entries)

    def append(
        self,
        *,
        rel_path: str,
        operation: Operation,
        bytes_written: int,
        source: str,
        sha256: str,
        context: Mapping[str, str] | None = None,
    ) -> AuditEntry:
        """Append one record, flushed and fsynced before returning.

        Args:
            rel_path: canonical path of the file written.
            operation: ``"write"`` or ``"append"``.
            bytes_written: UTF-8 bytes written or appended.
            source: who wrote.
            sha256: hex SHA-256 of the whole file after the write.
            context: optional string pairs (conversation, author, ...).

        Returns:
            The record as stored.

        Raises:
            AuditLogError: the record is malformed, or the file cannot be written
                (the chain state is unchanged; a partial line may remain and is
                reported by :func:`verify_audit`).
        """
        if operation not in _OPERATIONS:
            raise AuditLogError(f"unknown audit operation {operation!r}")
        if not _is_hex64(sha256):
            raise AuditLogError("sha256 must be 64 lowercase hex characters")
        pairs = dict(context or {})
        with self._lock:
            timestamp = datetime.now(UTC)
            record: dict[str, Any] = {
                "seq": self._last_seq + 1,
                "timestamp": timestamp.isoformat(timespec="microseconds"),
                "rel_path": rel_path,
                "operation": operation,
                "bytes_written": bytes_written,
                "source": source,
                "context": pairs,
                "sha256": sha256,
                "prev_hash": self._last_hash,
            }
            record["hash"] = record_hash(record)
            line = json.dumps(record, separators=(",", ":"), ensure_ascii=True) + "\n"
            data = (b"\n" if self._needs_newline else b"") + line.encode("ascii")
            self._write(data)
            entry = AuditEntry(
                rel_path=rel_path,
                operation=operation,
                bytes_written=bytes_written,
                source=source,
                timestamp=timestamp,
                seq=record["seq"],
                sha256=sha256,
                prev_hash=record["prev_hash"],
                hash=record["hash"],
                context=tuple(sorted(pairs.items())),
            )
            self._entries.append(entry)
            self._last_hash = entry.hash
            self._last_seq = entry.seq
            return entry

    def _write(self, data: bytes) -> None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        try:
            created = not self._path.exists()
            fd = os.open(self._path, flags, 0o600)
        except OSError as exc:
            raise AuditLogError(f"cannot open the audit log: {exc.strerror}") from exc
        written = 0
        try:
            view = memoryview(data)
            while written < len(data):
                written += os.write(fd, view[written:])
            os.fsync(fd)
        except OSError as exc:
            # Some bytes may be on disk: start the next record on a fresh line.
            self._needs_newline = self._needs_newline or written > 0
            raise AuditLogError(f"cannot append to the audit log: {exc.strerror}") from exc
        finally:
            os.close(fd)
        self._needs_newline = False
        if created:
            _fsync_dir(self._path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _memory_files(memory_root: Path) -> Iterator[str]:
    """Yield relative POSIX paths of regular files under the root (symlinks not followed)."""
    if not memory_root.is_dir():
        return
    for dirpath, _dirnames, filenames in os.walk(memory_root, followlinks=False):
        base = Path(dirpath)
        for name in filenames:
            if is_temp_name(name):
                continue  # the store removes its stale temp files at start
            try:
                mode = os.lstat(base / name).st_mode
            except OSError:
                continue
            if stat.S_ISREG(mode):
                yield (base / name).relative_to(memory_root).as_posix()


def verify_audit(
    audit_path: str | os.PathLike[str],
    memory_root: str | os.PathLike[str],
    *,
    max_problems: int = 1000,
) -> AuditVerification:
    """Check the audit chain and that every file in the memory root matches its last record.

    Checks, in order: each line parses as a record (a torn last line is named
    as such), each record's ``hash``, each ``prev_hash`` link and ``seq``
    step; then, for every regular file in the memory root and every path the
    log mentions, that the file's current SHA-256 equals the ``sha256`` of the
    last record for that path. A file changed by anything but the store (or
    written just before a crash, ahead of its record) shows up as
    ``file_changed``; a file with no record as ``not_in_audit_log``.

    Args:
        audit_path: the JSON-lines log (a missing file means an empty log).
        memory_root: the memory directory the log describes.
        max_problems: problems listed before the rest are summarised in one line.

    Returns:
        An :class:`AuditVerification`; ``problems[0]`` names the first record
        or file that does not match.

    Raises:
        AuditLogError: the log exists but cannot be read.
    """
    issues: list[AuditProblem] = []
    prev_hash = GENESIS_HASH
    prev_seq = 0
    checked = 0
    last_by_path: dict[str, AuditEntry] = {}
    for line_number, raw, complete in _iter_lines(Path(audit_path)):
        if not raw.strip():
            continue
        parsed = _parse_record(raw)
        if parsed is None:
            # Only the final line can lack its newline.
            if not complete:
                issues.append(
                    AuditProblem(
                        "torn_tail",
                        f"line {line_number}: torn final record (incomplete write, likely a crash)",
                        line_number=line_number,
                    )
                )
            else:
                issues.append(
                    AuditProblem(
                        "unreadable_record",
                        f"line {line_number}: unreadable record (torn by a crash or edited)",
                        line_number=line_number,
                    )
                )
            continue
        record, entry = parsed
        checked += 1
        where = f"line {line_number} (seq {entry.seq}, {entry.rel_path!r})"
        if record_hash(record) != entry.hash:
            issues.append(
                AuditProblem(
                    "hash_mismatch",
                    f"{where}: record does not match its hash (edited after it was written)",
                    line_number=line_number,
                    seq=entry.seq,
                    rel_path=entry.rel_path,
                )
            )
        if entry.prev_hash != prev_hash:
            issues.append(
                AuditProblem(
                    "chain_broken",
                    f"{where}: prev_hash does not match the record before it "
                    "(a record was deleted, inserted or reordered)",
                    line_number=line_number,
                    seq=entry.seq,
                    rel_path=entry.rel_path,
                )
            )
        elif entry.seq != prev_seq + 1:
            issues.append(
                AuditProblem(
                    "seq_gap",
                    f"{where}: seq follows {prev_seq}, expected {prev_seq + 1}",
                    line_number=line_number,
                    seq=entry.seq,
                    rel_path=entry.rel_path,
                )
            )
        prev_hash = entry.hash
        prev_seq = entry.seq
        last_by_path[entry.rel_path] = entry
    issues.extend(_check_files(Path(memory_root), last_by_path))
    problems = [issue.message for issue in issues[:max_problems]]
    if len(issues) > max_problems:
        problems.append(f"... and {len(issues) - max_problems} more problems")
    return AuditVerification(
        ok=not issues, records_checked=checked, problems=problems, issues=tuple(issues)
    )


def _check_files(memory_root: Path, last_by_path: Mapping[str, AuditEntry]) -> list[AuditProblem]:
    issues: list[AuditProblem] = []
    on_disk = set(_memory_files(memory_root))
    for rel_path in sorted(on_disk | set(last_by_path)):
        entry = last_by_path.get(rel_path)
        if entry is None:
            issues.append(
                AuditProblem(
                    "not_in_audit_log", f"file {rel_path!r}: not in audit log", rel_path=rel_path
                )
            )
            continue
        if entry.operation == "delete":
            if rel_path in on_disk:
                issues.append(
                    AuditProblem(
                        "file_changed",
                        f"file {rel_path!r}: exists although it was deleted at seq {entry.seq} "
                        "(recreated outside the store)",
                        seq=entry.seq,
                        rel_path=rel_path,
                    )
                )
            continue
        if rel_path not in on_disk:
            issues.append(
                AuditProblem(
                    "file_missing",
                    f"file {rel_path!r}: missing, last recorded at seq {entry.seq} "
                    "(removed outside the store)",
                    seq=entry.seq,
                    rel_path=rel_path,
                )
            )
            continue
        try:
            current = _file_sha256(memory_root / rel_path)
        except OSError as exc:
            issues.append(
                AuditProblem(
                    "file_unreadable",
                    f"file {rel_path!r}: cannot be read ({exc.strerror})",
                    rel_path=rel_path,
                )
            )
            continue
        if current != entry.sha256:
            issues.append(
                AuditProblem(
                    "file_changed",
                    f"file {rel_path!r}: content does not match the last audit record "
                    f"(seq {entry.seq}): file changed outside the store",
                    seq=entry.seq,
                    rel_path=rel_path,
                )
            )
    return issues


def format_audit_entries(
    entries: Iterable[AuditEntry], *, path_filter: str | None = None
) -> list[str]:
    """Render records as one readable line each, for ``familiar memory audit``.

    Args:
        entries: records, oldest first.
        path_filter: keep only records whose path starts with this prefix
            (``"people/alice"`` matches ``people/alice.md`` and
            ``people/alice/likes.md``), answering "when did this change".

    Returns:
        Lines like ``#12 2025-01-02T03:04:05+00:00 append people/alice.md
        42 B by memory_writer [conversation=discord:1] 3f2a9c1b7d4e``.
    """
    prefix = path_filter
    if prefix is not None:
        while prefix.startswith("./"):
            prefix = prefix[2:]
    lines: list[str] = []
    for entry in entries:
        if prefix and not entry.rel_path.startswith(prefix):
            continue
        context = ""
        if entry.context:
            context = " [" + ", ".join(f"{k}={v}" for k, v in entry.context) + "]"
        line = (
            f"#{entry.seq} {entry.timestamp.isoformat(timespec='seconds')} "
            f"{entry.operation} {entry.rel_path} {entry.bytes_written} B "
            f"by {entry.source}{context} {entry.hash[:12]}"
        )
        lines.append(_printable(line))
    return lines


def _printable(text: str) -> str:
    """Escape control characters so a damaged log cannot drive the terminal."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode() for ch in text)
