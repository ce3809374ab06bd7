"""Built-in end-to-end demonstrations (need the ``demo`` extra)."""
