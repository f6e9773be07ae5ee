"""Pure anomaly-detection code over float arrays: the isolation forest and transaction features.

Nothing here does I/O, reads a clock or touches global randomness; node/ feeds arrays in.
"""
