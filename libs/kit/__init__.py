"""Maillage kit: what every service shares (settings, database, NATS, outbox, consumers, errors, telemetry, auth)."""
