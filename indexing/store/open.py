"""`open_store`: the one place that decides which `VectorStore` Nominal runs on."""

from __future__ import annotations

from pathlib import Path

from indexing.store.approximate import DEFAULT_APPROXIMATE_ABOVE
from indexing.store.base import VectorStore
from indexing.store.edge import EdgeStore
from indexing.store.server import ServerStore


def open_store(
    *,
    data_dir: str | Path | None = None,
    qdrant_url: str | None = None,
    qdrant_api_key: str | None = None,
    shard_number: int | None = None,
    replication_factor: int | None = None,
    approximate_above: int | None = DEFAULT_APPROXIMATE_ABOVE,
) -> VectorStore:
    """The embedded store in `data_dir`, or the Qdrant server at `qdrant_url`: exactly one of them.

    Args:
        data_dir: directory of the embedded store (created if needed); one process owns it.
        qdrant_url: URL of a Qdrant server, e.g. "http://qdrant:6333", for several processes.
        qdrant_api_key: the server's API key, if it needs one; only with `qdrant_url`.
        shard_number, replication_factor: for new collections on a distributed Qdrant
            cluster; only with `qdrant_url` (None: the server's defaults).
        approximate_above: collections with more points are searched through an
            approximate index, candidates rescored exactly (0 or None: always exact).

    Raises:
        ValueError: both or neither of `data_dir` and `qdrant_url` given, or an API key
            without a URL.
        StoreUnavailable: `data_dir` is already open in another process.
    """
    if data_dir is not None and qdrant_url is not None:
        raise ValueError(
            "give only one of data_dir (embedded store) or qdrant_url (Qdrant server), not both: "
            "use NOMINAL_DATA for the embedded store or QDRANT_URL for a server"
        )
    if qdrant_url is not None:
        return ServerStore.connect(
            qdrant_url, api_key=qdrant_api_key, shard_number=shard_number, replication_factor=replication_factor,
            approximate_above=approximate_above,
        )
    if qdrant_api_key is not None:
        raise ValueError("qdrant_api_key is only used with qdrant_url: set QDRANT_URL too, or drop the key")
    if data_dir is not None:
        return EdgeStore(data_dir, approximate_above=approximate_above)
    raise ValueError(
        "give one of data_dir (embedded store in a directory) or qdrant_url (Qdrant server); neither was given"
    )
