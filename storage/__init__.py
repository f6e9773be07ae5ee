"""LevelDB storage: key layout and atomic per-block batches. Keys and bytes only; imports plyvel and
stdlib.
"""

from storage.db import StorageError, Store

__all__ = ["StorageError", "Store"]
