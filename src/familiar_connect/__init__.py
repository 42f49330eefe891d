"""Familiar-Connect: one familiar with a persona, a voice and a memory."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
