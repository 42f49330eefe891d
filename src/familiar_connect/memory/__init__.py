"""The familiar's memory directory: a path-jailed, capped, atomic and audited notes store.

Public surface::

    MemoryStore, AsyncMemoryStore, MemoryStoreLimits, MemoryEntry, GrepHit
    AuditLog, AuditEntry, AuditVerification, AuditProblem
    verify_audit, format_audit_entries
    MemoryStoreError > MemoryStorePathError, MemoryStoreSizeLimitError; AuditLogError
"""

from __future__ import annotations

from familiar_connect.errors import AuditLogError
from familiar_connect.memory.async_store import AsyncMemoryStore
from familiar_connect.memory.audit import (
    AuditEntry,
    AuditLog,
    AuditProblem,
    AuditVerification,
    format_audit_entries,
    verify_audit,
)
from familiar_connect.memory.store import (
    GrepHit,
    MemoryEntry,
    MemoryStore,
    MemoryStoreError,
    MemoryStoreLimits,
    MemoryStorePathError,
    MemoryStoreSizeLimitError,
    WriteListener,
)

__all__ = [
    "AsyncMemoryStore",
    "AuditEntry",
    "AuditLog",
    "AuditLogError",
    "AuditProblem",
    "AuditVerification",
    "GrepHit",
    "MemoryEntry",
    "MemoryStore",
    "MemoryStoreError",
    "MemoryStoreLimits",
    "MemoryStorePathError",
    "MemoryStoreSizeLimitError",
    "WriteListener",
    "format_audit_entries",
    "verify_audit",
]
