"""LevelDB storage: key layout (two databases) and atomic per-block commits. Keys and bytes only;
imports plyvel and stdlib.
"""

from storage.db import StorageError, Store

__all__ = ["StorageError", "Store"]
