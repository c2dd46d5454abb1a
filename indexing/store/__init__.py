"""Where Nominal keeps nominal vectors, aliases and records: `open_store` picks embedded or server."""

from indexing.store.base import Neighbour, Point, Records, VectorStore, Vectors
from indexing.store.edge import EdgeStore
from indexing.store.open import open_store
from indexing.store.server import ServerStore

__all__ = ["EdgeStore", "Neighbour", "Point", "Records", "ServerStore", "VectorStore", "Vectors", "open_store"]
