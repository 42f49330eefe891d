"""Streaming speech-to-text providers behind one protocol (:mod:`.base`)."""
