"""The deterministic PBFT simulator (test tooling; never on the runtime path)."""
