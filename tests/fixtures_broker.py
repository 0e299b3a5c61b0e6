"""Real mosquitto brokers on loopback for tests (owned by the publisher/spool work)."""
