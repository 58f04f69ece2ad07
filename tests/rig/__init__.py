"""Test rig: private Dovecot, a fresh Postgres database, Redis with a per-run prefix."""
