"""Paper experiments reproducible by one command."""
