"""Shared core: canonical codec, hashing and Ed25519 helpers. Depends on msgpack and cryptography
only.
"""
