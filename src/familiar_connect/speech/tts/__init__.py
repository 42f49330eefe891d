"""Streaming text-to-speech providers behind one protocol (:mod:`.base`)."""
