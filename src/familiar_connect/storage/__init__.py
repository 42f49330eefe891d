"""SQLite storage: one database per familiar, and the stores built on it.

Open the database once with :func:`open_database`, then hand it to the
stores. Each store exposes domain methods only, so the backing database can
change without touching callers (DESIGN §7)::

    db = await open_database(data_dir / "familiar.db")
    history = HistoryStore(db)
    writer = HistoryWriter(history)
    ...
    await writer.aclose()
    await db.close()
"""

from __future__ import annotations

from familiar_connect.storage.db import Database, open_database
from familiar_connect.storage.history import HistoryStore, HistoryWriter, Modality, Role, Turn
from familiar_connect.storage.migrations import MIGRATIONS, Migration
from familiar_connect.storage.notes_index import NoteHit, NotesIndex, RebuildResult
from familiar_connect.storage.privacy import PrivacyStore
from familiar_connect.storage.subscriptions import Subscription, SubscriptionStore
from familiar_connect.storage.usage import DailyUsage, UsageRecord, UsageStore, UsageTotals
from familiar_connect.storage.vault import (
    Vault,
    derive_keys,
    master_key_variable,
    master_keys_from_env,
)

__all__ = [
    "MIGRATIONS",
    "DailyUsage",
    "Database",
    "HistoryStore",
    "HistoryWriter",
    "Migration",
    "Modality",
    "NoteHit",
    "NotesIndex",
    "PrivacyStore",
    "RebuildResult",
    "Role",
    "Subscription",
    "SubscriptionStore",
    "Turn",
    "UsageRecord",
    "UsageStore",
    "UsageTotals",
    "Vault",
    "derive_keys",
    "master_key_variable",
    "master_keys_from_env",
    "open_database",
]
