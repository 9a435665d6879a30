"""Small shared utilities: atomic file writes, typed-value checks, tiny models for tests."""
