"""Framework integrations (optional extras): they depend on the core, never the reverse."""
