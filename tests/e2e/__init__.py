"""End-to-end suites that need more than loopback (the network fault lab)."""
