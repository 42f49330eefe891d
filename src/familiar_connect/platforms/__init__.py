"""Platform adapters: they move bytes and translate, nothing else (DESIGN §2)."""
