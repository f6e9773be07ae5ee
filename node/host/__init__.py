"""The validator process: runtime wiring, consensus driver, committer, admission, config, logs,
metrics.
"""
