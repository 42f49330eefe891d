"""Tests for the hash-chained audit log: records, restarts, verification and formatting."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from familiar_connect.errors import AuditLogError
from familiar_connect.memory.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditLog,
    format_audit_entries,
    quarantine_torn_tail,
    record_hash,
    verify_audit,
)
from familiar_connect.memory.store import MemoryStore

SHA_A = hashlib.sha256(b"a").hexdigest()


def read_records(path: Path) -> list[dict[str, object]]:
    """The audit file's lines as parsed JSON objects."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def kinds(result: object) -> list[str]:
    """The problem kinds of a verification result, in order."""
    return [issue.kind for issue in result.issues]  # type: ignore[attr-defined]


@pytest.fixture(name="store")
def fixture_store(tmp_path: Path) -> MemoryStore:
    return MemoryStore(tmp_path / "memory", audit_path=tmp_path / "audit.jsonl")


@pytest.fixture(name="filled")
def fixture_filled(store: MemoryStore) -> MemoryStore:
    store.write_file("people/alice.md", "Alice likes tea\n", source="memory_writer")
    store.append_file("people/alice.md", "Alice has a cat\n", source="tool:append_note")
    store.write_file("people/bob.md", "Bob\n", source="operator")
    store.write_file("places.md", "Paris\n", source="memory_writer")
    return store


class TestAuditLog:
    def test_record_fields_and_chain(self, tmp_path: Path) -> None:
        """Each line holds the documented fields, hashes itself, and links to the one before."""
        audit = AuditLog(tmp_path / "a.jsonl")
        first = audit.append(
            rel_path="a.md",
            operation="write",
            bytes_written=1,
            source="operator",
            sha256=SHA_A,
            context={"conversation": "discord:1"},
        )
        second = audit.append(
            rel_path="a.md", operation="append", bytes_written=2, source="x", sha256=SHA_A
        )
        records = read_records(tmp_path / "a.jsonl")
        assert set(records[0]) == {
            "seq",
            "timestamp",
            "rel_path",
            "operation",
            "bytes_written",
            "source",
            "context",
            "sha256",
            "prev_hash",
            "hash",
        }
        assert [r["seq"] for r in records] == [1, 2]
        assert records[0]["prev_hash"] == GENESIS_HASH == "0" * 64
        assert records[1]["prev_hash"] == records[0]["hash"] == first.hash
        assert all(record_hash(r) == r["hash"] for r in records)
        assert records[0]["context"] == {"conversation": "discord:1"}
        assert datetime.fromisoformat(str(records[0]["timestamp"])).utcoffset() is not None
        assert second.prev_hash == first.hash
        assert audit.last_hash == second.hash

    def test_hash_is_sha256_of_canonical_json(self) -> None:
        """record_hash is SHA-256 of sorted, compact JSON without the hash key."""
        record = {"b": 1, "a": "x", "hash": "ignored"}
        expected = hashlib.sha256(b'{"a":"x","b":1}').hexdigest()
        assert record_hash(record) == expected

    def test_entries_is_a_copy(self, tmp_path: Path) -> None:
        """Mutating the returned list does not change the log's records."""
        audit = AuditLog(tmp_path / "a.jsonl")
        audit.append(rel_path="a", operation="write", bytes_written=1, source="s", sha256=SHA_A)
        audit.entries().clear()
        assert len(audit.entries()) == 1

    def test_construction_does_not_create_file(self, tmp_path: Path) -> None:
        """Opening a log for reading never creates it."""
        AuditLog(tmp_path / "a.jsonl")
        assert not (tmp_path / "a.jsonl").exists()

    @pytest.mark.parametrize(
        ("operation", "sha"), [("rename", SHA_A), ("write", "nothex"), ("write", SHA_A.upper())]
    )
    def test_malformed_append_rejected(self, tmp_path: Path, operation: str, sha: str) -> None:
        """An unknown operation or a malformed sha256 raises AuditLogError and writes nothing."""
        audit = AuditLog(tmp_path / "a.jsonl")
        with pytest.raises(AuditLogError):
            audit.append(
                rel_path="a",
                operation=operation,  # type: ignore[arg-type]
                bytes_written=1,
                source="s",
                sha256=sha,
            )
        assert not (tmp_path / "a.jsonl").exists()

    def test_reload_continues_chain(self, tmp_path: Path) -> None:
        """A new AuditLog on the same file loads the records and continues seq and chain."""
        path = tmp_path / "a.jsonl"
        first = AuditLog(path)
        old = first.append(
            rel_path="a", operation="write", bytes_written=1, source="s", sha256=SHA_A
        )
        again = AuditLog(path)
        assert again.entries() == [old]
        new = again.append(
            rel_path="b", operation="write", bytes_written=1, source="s", sha256=SHA_A
        )
        assert (new.seq, new.prev_hash) == (2, old.hash)

    def test_torn_tail_tolerated_and_isolated(self, tmp_path: Path) -> None:
        """A torn last line does not stop loading, and the next record starts on its own line."""
        path = tmp_path / "a.jsonl"
        log = AuditLog(path)
        good = log.append(
            rel_path="a", operation="write", bytes_written=1, source="s", sha256=SHA_A
        )
        with path.open("ab") as handle:
            handle.write(b'{"seq":2,"timest')
        reloaded = AuditLog(path)
        assert reloaded.entries() == [good]
        new = reloaded.append(
            rel_path="a", operation="write", bytes_written=1, source="s", sha256=SHA_A
        )
        assert (new.seq, new.prev_hash) == (2, good.hash)
        lines = path.read_bytes().split(b"\n")
        assert lines[1] == b'{"seq":2,"timest'
        assert json.loads(lines[2])["seq"] == 2

    def test_quarantine_moves_torn_tail_aside(self, tmp_path: Path) -> None:
        """quarantine_torn_tail cuts the log back to its last record and keeps the fragment in .torn."""
        path = tmp_path / "a.jsonl"
        log = AuditLog(path)
        good = log.append(
            rel_path="a", operation="write", bytes_written=1, source="s", sha256=SHA_A
        )
        with path.open("ab") as handle:
            handle.write(b'{"seq":2,"timest')
        assert quarantine_torn_tail(path) == b'{"seq":2,"timest'
        assert path.read_bytes().count(b"\n") == 1
        assert (tmp_path / "a.jsonl.torn").read_bytes() == b'{"seq":2,"timest\n'
        again = AuditLog(path)
        assert again.entries() == [good]
        again.append(rel_path="a", operation="write", bytes_written=1, source="s", sha256=SHA_A)
        assert [entry.seq for entry in AuditLog(path).entries()] == [1, 2]

    def test_quarantine_completes_record_missing_only_newline(self, tmp_path: Path) -> None:
        """A last record that lacks only its newline is kept and completed, not moved."""
        path = tmp_path / "a.jsonl"
        AuditLog(path).append(
            rel_path="a", operation="write", bytes_written=1, source="s", sha256=SHA_A
        )
        path.write_bytes(path.read_bytes().rstrip(b"\n"))
        assert quarantine_torn_tail(path) is None
        assert path.read_bytes().endswith(b"\n")
        assert len(AuditLog(path).entries()) == 1
        assert not (tmp_path / "a.jsonl.torn").exists()

    def test_quarantine_leaves_clean_log_alone(self, tmp_path: Path) -> None:
        """A log ending in a complete line, or no log at all, is not touched."""
        path = tmp_path / "a.jsonl"
        assert quarantine_torn_tail(path) is None
        AuditLog(path).append(
            rel_path="a", operation="write", bytes_written=1, source="s", sha256=SHA_A
        )
        before = path.read_bytes()
        assert quarantine_torn_tail(path) is None
        assert path.read_bytes() == before

    def test_memory_bound(self, tmp_path: Path) -> None:
        """Only the newest max_entries_in_memory records are kept in memory; the file keeps all."""
        audit = AuditLog(tmp_path / "a.jsonl", max_entries_in_memory=2)
        for i in range(3):
            audit.append(
                rel_path=f"{i}", operation="write", bytes_written=1, source="s", sha256=SHA_A
            )
        assert [e.rel_path for e in audit.entries()] == ["1", "2"]
        assert len(read_records(tmp_path / "a.jsonl")) == 3


class TestStoreRestart:
    def test_new_store_sees_old_entries_and_chain_continues(
        self, filled: MemoryStore, tmp_path: Path
    ) -> None:
        """A store reopened on the same dirs loads every record and keeps the chain going."""
        old = filled.audit_entries
        reopened = MemoryStore(tmp_path / "memory", audit_path=tmp_path / "audit.jsonl")
        assert reopened.audit_entries == old
        reopened.append_file("places.md", "Rome\n", source="memory_writer")
        entries = reopened.audit_entries
        assert entries[-1].seq == old[-1].seq + 1
        assert entries[-1].prev_hash == old[-1].hash
        result = verify_audit(reopened.audit_path, reopened.root)
        assert result.ok, result.problems
        assert result.records_checked == 5

    def test_failed_write_leaves_no_record(self, store: MemoryStore) -> None:
        """A refused write appends nothing to the audit file."""
        with pytest.raises(Exception, match="path"):
            store.write_file("../escape.md", "x")
        assert not store.audit_path.exists()


class TestVerifyAudit:
    def test_clean_log_ok(self, filled: MemoryStore) -> None:
        """An untouched log and memory root verify with no problems."""
        result = verify_audit(filled.audit_path, filled.root)
        assert result.ok
        assert result.records_checked == 4
        assert result.problems == [] and result.first_problem is None

    def test_missing_log_and_empty_root_ok(self, tmp_path: Path) -> None:
        """No log and no files is a clean state."""
        (tmp_path / "mem").mkdir()
        result = verify_audit(tmp_path / "none.jsonl", tmp_path / "mem")
        assert result.ok and result.records_checked == 0

    def test_tampered_line(self, filled: MemoryStore) -> None:
        """Editing a record's field is reported as a hash mismatch naming its seq and path."""
        lines = filled.audit_path.read_text().splitlines()
        record = json.loads(lines[1])
        record["bytes_written"] = 999
        lines[1] = json.dumps(record)
        filled.audit_path.write_text("\n".join(lines) + "\n")
        result = verify_audit(filled.audit_path, filled.root)
        assert not result.ok
        assert kinds(result) == ["hash_mismatch"]
        assert "seq 2" in result.problems[0] and "people/alice.md" in result.problems[0]

    def test_tampered_line_with_recomputed_hash(self, filled: MemoryStore) -> None:
        """Rehashing an edited record still breaks the link from the record after it."""
        lines = filled.audit_path.read_text().splitlines()
        record = json.loads(lines[1])
        record["source"] = "operator"
        record["hash"] = record_hash(record)
        lines[1] = json.dumps(record)
        filled.audit_path.write_text("\n".join(lines) + "\n")
        result = verify_audit(filled.audit_path, filled.root)
        assert kinds(result) == ["chain_broken"]
        assert result.issues[0].seq == 3

    def test_deleted_line(self, filled: MemoryStore) -> None:
        """Deleting a record breaks the chain at the record that followed it."""
        lines = filled.audit_path.read_text().splitlines()
        del lines[2]
        filled.audit_path.write_text("\n".join(lines) + "\n")
        result = verify_audit(filled.audit_path, filled.root)
        assert not result.ok
        assert result.issues[0].kind == "chain_broken"
        assert result.issues[0].seq == 4 and result.issues[0].line_number == 3
        assert "line 3 (seq 4" in result.first_problem  # type: ignore[operator]

    def test_deleted_last_line_caught_by_file_hash(self, filled: MemoryStore) -> None:
        """Dropping the newest record leaves a file that matches no record, which is named."""
        lines = filled.audit_path.read_text().splitlines()
        filled.audit_path.write_text("\n".join(lines[:-1]) + "\n")
        result = verify_audit(filled.audit_path, filled.root)
        assert kinds(result) == ["not_in_audit_log"]
        assert result.issues[0].rel_path == "places.md"

    def test_file_edited_behind_the_store(self, filled: MemoryStore) -> None:
        """A file whose content no longer matches its last record is named as changed outside."""
        (filled.root / "people" / "alice.md").write_text("Alice hates tea\n")
        result = verify_audit(filled.audit_path, filled.root)
        assert kinds(result) == ["file_changed"]
        assert "people/alice.md" in result.problems[0]
        assert "changed outside the store" in result.problems[0]
        assert result.issues[0].seq == 2

    def test_file_not_in_log_and_file_missing(self, filled: MemoryStore) -> None:
        """An unrecorded file and a recorded file that vanished are both reported."""
        (filled.root / "sneaky.md").write_text("x")
        (filled.root / "places.md").unlink()
        result = verify_audit(filled.audit_path, filled.root)
        assert kinds(result) == ["file_missing", "not_in_audit_log"]
        assert "not in audit log" in result.problems[1]

    def test_torn_tail_reported(self, filled: MemoryStore) -> None:
        """A partial last line is reported as a torn final record and nothing else."""
        with filled.audit_path.open("ab") as handle:
            handle.write(b'{"seq":5,"rel_pa')
        result = verify_audit(filled.audit_path, filled.root)
        assert kinds(result) == ["torn_tail"]
        assert result.records_checked == 4
        assert (
            result.first_problem == "line 5: torn final record (incomplete write, likely a crash)"
        )

    def test_garbage_line_in_middle(self, filled: MemoryStore) -> None:
        """An unparseable complete line is reported as unreadable, and the chain still checks."""
        lines = filled.audit_path.read_text().splitlines()
        lines.insert(2, "not json")
        filled.audit_path.write_text("\n".join(lines) + "\n")
        result = verify_audit(filled.audit_path, filled.root)
        assert kinds(result) == ["unreadable_record"]

    def test_problem_list_is_bounded(self, filled: MemoryStore) -> None:
        """Past max_problems the rest are summarised in one line."""
        for i in range(5):
            (filled.root / f"extra{i}.md").write_text("x")
        result = verify_audit(filled.audit_path, filled.root, max_problems=2)
        assert len(result.problems) == 3
        assert result.problems[-1] == "... and 3 more problems"
        assert len(result.issues) == 5


class TestFormatAuditEntries:
    def test_one_line_per_record(self, filled: MemoryStore) -> None:
        """Each record renders with seq, timestamp, operation, path, bytes, source and short hash."""
        entries = filled.audit_entries
        lines = format_audit_entries(entries)
        assert len(lines) == 4
        second = entries[1]
        assert lines[1] == (
            f"#2 {second.timestamp.isoformat(timespec='seconds')} append people/alice.md "
            f"16 B by tool:append_note {second.hash[:12]}"
        )

    def test_path_prefix_filter_answers_when_beliefs_changed(self, filled: MemoryStore) -> None:
        """Filtering by path prefix lists exactly the changes to that subject, in order."""
        lines = format_audit_entries(filled.audit_entries, path_filter="people/alice")
        assert [line.split()[0] for line in lines] == ["#1", "#2"]
        assert format_audit_entries(filled.audit_entries, path_filter="./people/") == (
            format_audit_entries(filled.audit_entries[:3])
        )
        assert format_audit_entries(filled.audit_entries, path_filter="nobody") == []

    def test_context_and_control_characters(self) -> None:
        """Context pairs are shown and control characters from a damaged log are escaped."""
        entry = AuditEntry(
            rel_path="a\x1b[31m.md",
            operation="write",
            bytes_written=1,
            source="operator",
            timestamp=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
            seq=7,
            hash="ab" * 32,
            context=(("author", "alice"), ("conversation", "discord:1")),
        )
        (line,) = format_audit_entries([entry])
        assert "\x1b" not in line
        assert line == (
            "#7 2025-01-02T03:04:05+00:00 write a\\x1b[31m.md 1 B by operator "
            "[author=alice, conversation=discord:1] abababababab"
        )
