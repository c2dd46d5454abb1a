"""`ImageStore`: uploaded image files kept by their SHA-256, so work can pass references.

Jobs and Celery tasks carry a SHA-256 (and the source name), never the bytes:
the bytes stay here, written once, and any process that can read the directory
(an API, an in-process job, a worker on the same host or a shared volume) loads
them back. The same content is stored once, whoever uploads it.

Layout:

    <root>/<aa>/<sha256>        the encoded file exactly as received

A file appears by an atomic rename of a fully written, fsynced temporary file,
so a process killed mid-write never leaves a truncated image under its name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexing.errors import BadImage
from indexing.images import ImageInput

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImageRef:
    """What a job carries instead of an image: its content hash, where it came from, and user metadata."""

    sha256: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "source": self.source, "metadata": dict(self.metadata)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageRef":
        return cls(sha256=data["sha256"], source=data["source"], metadata=dict(data.get("metadata") or {}))


class ImageStore:
    """Content-addressed image files under one directory.

    Args:
        root: the directory (created if needed), e.g. `<NOMINAL_DATA>/images`.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, image: ImageInput) -> ImageRef:
        """Keep an image's bytes (once per content) and return the reference to hand to a job."""
        path = self.path(image.sha256)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(image.data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return ImageRef(sha256=image.sha256, source=image.source, metadata=dict(image.metadata))

    def load(self, ref: ImageRef) -> ImageInput:
        """The image a reference names; `BadImage` if it is not here or its bytes changed."""
        path = self.path(ref.sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise BadImage(ref.source, f"image {ref.sha256[:12]} is not in the image store {self.root}") from exc
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise BadImage(ref.source, f"stored file {path} no longer matches its SHA-256 (disk corruption?)")
        return ImageInput(data=data, source=ref.source, metadata=dict(ref.metadata))

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def path(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise ValueError(f"not a SHA-256 hex digest: {sha256!r}")
        return self.root / sha256[:2] / sha256
