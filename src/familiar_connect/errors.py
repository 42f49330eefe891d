"""The one exception tree of Familiar-Connect.

Every error the product raises on purpose derives from :class:`FamiliarError`.
Adapters translate third-party exceptions (httpx, aiohttp, discord.py,
twitchio, provider SDKs, sqlite3, OSError) into the most specific class below
at the boundary, with ``raise ... from exc``, so callers never need to know
which library sits behind a part::

    FamiliarError
    ├── ConfigError                      bad settings or character file; start-up exits 2
    │   └── CharacterConfigError         character.toml / character.md (names file and key)
    ├── StorageError                     SQLite stores
    │   ├── MigrationError               a numbered migration failed or the schema is newer
    │   └── VaultError                   encrypted secrets at rest
    │       └── VaultKeyError            no master key, or no key version for a ciphertext
    ├── MemoryStoreError                 the memory directory (also: not found, not a file/dir)
    │   ├── MemoryStorePathError         a path that would leave the memory root
    │   └── MemoryStoreSizeLimitError    a file, result or directory cap was hit
    ├── AuditLogError                    the audit log cannot be read or appended
    ├── ProviderError                    a remote service (provider, status, retry_after_s)
    │   ├── ProviderConnectionError      could not connect, or the connection dropped
    │   ├── ProviderTimeout              connect/read timeout or a stalled stream
    │   ├── ProviderProtocolError        the service answered something we cannot parse
    │   ├── ProviderBadRequest           400: our request was rejected as malformed
    │   ├── ProviderAuthError            401: bad, revoked or missing credentials
    │   ├── ProviderQuotaError           402: out of credits or over a key limit
    │   ├── ProviderRefused              403: moderation or guardrail refused the input
    │   ├── ProviderRateLimited          408/429: slow down (retry_after_s when given)
    │   └── ProviderUnavailable          502/503 and other 5xx: the upstream is down
    ├── ToolError                        a tool call the model made could not run
    │   ├── UnknownToolError             the model named a tool that does not exist
    │   └── ToolArgumentError            arguments were not valid JSON or not valid for the schema
    └── ConversationError                a turn could not be completed

Messages never contain secret values: code that builds them formats only
names, statuses and redacted text.
"""

from __future__ import annotations

__all__ = [
    "AuditLogError",
    "CharacterConfigError",
    "ConfigError",
    "ConversationError",
    "FamiliarError",
    "MemoryStoreError",
    "MemoryStorePathError",
    "MemoryStoreSizeLimitError",
    "MigrationError",
    "ProviderAuthError",
    "ProviderBadRequest",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderProtocolError",
    "ProviderQuotaError",
    "ProviderRateLimited",
    "ProviderRefused",
    "ProviderTimeout",
    "ProviderUnavailable",
    "StorageError",
    "ToolArgumentError",
    "ToolError",
    "UnknownToolError",
    "VaultError",
    "VaultKeyError",
]


class FamiliarError(Exception):
    """Root of every error Familiar-Connect raises on purpose."""


class ConfigError(FamiliarError):
    """Settings are missing or invalid; start-up stops with exit code 2.

    ``problems`` holds one readable line per bad variable or key, so a person
    can fix all of them at once rather than one per run.
    """

    def __init__(self, message: str, *, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems

    def __str__(self) -> str:
        head = super().__str__()
        if not self.problems:
            return head
        return head + "\n" + "\n".join(f"  - {line}" for line in self.problems)


class CharacterConfigError(ConfigError):
    """A familiar's character.toml or character.md is invalid."""


class StorageError(FamiliarError):
    """A SQLite store failed to read or write."""


class MigrationError(StorageError):
    """A schema migration failed, or the database is newer than this program."""


class VaultError(StorageError):
    """An encrypted secret could not be stored or read back."""


class VaultKeyError(VaultError):
    """The master key is missing, or no configured key version opens a ciphertext."""


class MemoryStoreError(FamiliarError):
    """A memory operation failed: not found, not a directory, not a regular file, bad input."""


class MemoryStorePathError(MemoryStoreError):
    """A path would leave the memory root (``..``, absolute, drive, NUL, symlink out)."""


class MemoryStoreSizeLimitError(MemoryStoreError):
    """A file-size, results-per-operation or files-per-directory cap was exceeded."""


class AuditLogError(FamiliarError):
    """The memory audit log could not be read or appended."""


class ProviderError(FamiliarError):
    """A remote service failed.

    Attributes:
        provider: short service name, e.g. ``"openrouter"`` or ``"deepgram"``.
        status: HTTP status or close code when there was one.
        retry_after_s: seconds the service asked us to wait, when it said.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        base = super().__str__()
        status = f" (status {self.status})" if self.status is not None else ""
        return f"{self.provider}{status}: {base}"


class ProviderConnectionError(ProviderError):
    """The connection could not be made or dropped mid-way."""


class ProviderTimeout(ProviderError):
    """A connect or read timeout, or a stream that stalled."""


class ProviderProtocolError(ProviderError):
    """The service sent something that does not parse as its protocol."""


class ProviderBadRequest(ProviderError):
    """HTTP 400: the service rejected our request as malformed. Never retried."""


class ProviderAuthError(ProviderError):
    """HTTP 401: the credentials are missing, wrong or revoked. Never retried."""


class ProviderQuotaError(ProviderError):
    """HTTP 402: out of credits or over the key's spending limit. Never retried."""


class ProviderRefused(ProviderError):
    """HTTP 403: moderation or a guardrail refused the input. Never retried."""


class ProviderRateLimited(ProviderError):
    """HTTP 408 or 429: retried with backoff, honouring ``retry_after_s``."""


class ProviderUnavailable(ProviderError):
    """HTTP 502/503 (or another 5xx): the upstream is down; retried with backoff."""


class ToolError(FamiliarError):
    """A tool call could not run; the model sees this as a JSON error result."""


class UnknownToolError(ToolError):
    """The model asked for a tool that is not registered."""


class ToolArgumentError(ToolError):
    """The model's arguments were not JSON, or did not match the tool's schema."""


class ConversationError(FamiliarError):
    """A conversation turn could not be completed."""
