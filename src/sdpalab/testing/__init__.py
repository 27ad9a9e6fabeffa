"""Test-only helpers (fault-injecting backends). Nothing here is used by a normal run."""
