"""Cross-cutting reliability and security suite (issue 9): canaries, faults, crashes, bad input, soak."""
