"""Contract kinds, one module per version (base.py: the interface; registry.py: the list)."""
