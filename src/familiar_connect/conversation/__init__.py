"""Conversations: the orchestrator's actors, the tool loop and the tool registry.

Public names live in their modules for now (:mod:`.tools`, :mod:`.memory_tools`);
the orchestrator's exports are added here once it exists.
"""

from __future__ import annotations

__all__: list[str] = []
