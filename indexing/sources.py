"""Re-index sources: what a folder, glob or manifest CSV names, and reading those files inside allowed roots.

A source named by someone who may only read inside some directories (an HTTP
client: `NOMINAL_SOURCE_ROOTS`) carries those roots with every item it lists, so
the rule holds where each file is opened, in whichever process opens it (the API
process, or a Celery worker much later). Listing-time checks alone would let a
glob, folder or symlink changed between the check and the read escape the roots.

The check is made on the file actually opened: open first, then ask the kernel
which file that descriptor is (`/proc/self/fd`), so a symlink swapped between a
check and the open cannot redirect the read.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexing.datasets import find_images
from indexing.errors import BadImage, NoImages, SourceNotAllowed
from indexing.images import ImageInput

Roots = tuple[str, ...]


def _resolved(roots: Sequence[str | Path]) -> list[Path]:
    return [Path(root).resolve() for root in roots]


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _describe(roots: Sequence[Path]) -> str:
    return "; ".join(str(root) for root in roots) or "none configured"


def outside_message(what: str, roots: Sequence[str | Path]) -> str:
    return f"{what} is outside the directories re-index sources may be read from ({_describe(_resolved(roots))})"


def _opened_path(fd: int, path: str) -> Path:
    """The real path of the file open on `fd`; the kernel's answer where there is one."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        real = os.path.realpath(path)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(real)):
                return Path(real)
        except OSError:
            pass
        raise BadImage(path, "the file changed while it was being opened; not read") from None


def read_within(path: str | Path, roots: Sequence[str | Path] | None) -> bytes:
    """The bytes of `path`, if the file opened lies inside `roots` (None: anywhere).

    Raises:
        SourceNotAllowed: the file opened (symlinks followed) lies outside every root.
        OSError: it cannot be opened or read.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if roots is not None and not _inside(_opened_path(fd, str(path)), _resolved(roots)):
            raise SourceNotAllowed(outside_message(str(path), roots))
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return handle.read()
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SourceItem:
    """One image a re-index source names: a path any worker can read, its metadata, and where it may lie.

    `roots` None: anywhere (a source named on the server's own command line);
    otherwise the file read must lie inside one of them, checked when it is opened.
    """

    path: str
    metadata: dict[str, Any] = field(default_factory=dict)
    roots: Roots | None = None

    def load(self) -> ImageInput:
        """The image's bytes; `BadImage` if the file cannot be read or lies outside the roots."""
        try:
            data = read_within(self.path, self.roots)
        except SourceNotAllowed as error:
            raise BadImage(self.path, str(error)) from error
        except OSError as error:
            raise BadImage(self.path, f"cannot read file ({error.strerror or error})") from error
        return ImageInput(data=data, source=self.path, metadata=dict(self.metadata))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"path": self.path, "metadata": dict(self.metadata)}
        if self.roots is not None:
            data["roots"] = list(self.roots)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SourceItem":
        roots = data.get("roots")
        return cls(
            path=data["path"], metadata=dict(data.get("metadata") or {}),
            roots=tuple(roots) if roots is not None else None,
        )


def read_source(source: str | Path, roots: Sequence[str | Path] | None = None) -> list[SourceItem]:
    """The images a re-index source names: a manifest CSV, or a folder or glob of image files.

    With `roots`, for a source named by someone who may only read inside them (an
    HTTP client): the source's own directory is checked before anything is
    listed, so nothing outside is even looked at; then every image it names,
    which keeps a manifest's absolute paths and symlinks from leading out; and
    each item carries the roots, so the file is checked again when it is opened.
    Paths are compared resolved (symlinks and ".." followed).

    Raises:
        SourceNotAllowed: the source or one of its images lies outside every root.
        NoImages: the source names no image (or the manifest has no `path` column).
    """
    path = Path(source)
    fixed: Roots | None = None
    if roots is not None:
        fixed = tuple(str(root) for root in _resolved(roots))
        if not _inside(_fixed_part(path).resolve(), _resolved(fixed)):
            raise SourceNotAllowed(outside_message(str(source), fixed))
    if path.suffix.lower() == ".csv" and path.is_file():
        items = read_manifest(path, fixed)
    else:
        items = [SourceItem(str(found), roots=fixed) for found in find_images([source])]
    if fixed is not None:
        outside = next((item.path for item in items if not _inside(Path(item.path).resolve(), _resolved(fixed))), None)
        if outside is not None:
            raise SourceNotAllowed(f"{source} names {outside}, which " + outside_message("", fixed).lstrip())
    return items


def read_source_within(source: str | Path, roots: Sequence[Path]) -> list[SourceItem]:
    """`read_source` with `roots` (kept for callers that name the check)."""
    return read_source(source, roots)


def _fixed_part(path: Path) -> Path:
    """The leading components of a path or glob before the first wildcard."""
    fixed = []
    for part in path.parts:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def read_manifest(manifest: Path, roots: Roots | None = None) -> list[SourceItem]:
    """Rows of a manifest CSV: `path` (absolute, or relative to the CSV's folder) and metadata columns.

    A listed file that is missing is not an error here: it is reported as a bad
    image of the job, like any other file that cannot be read. With `roots`, the
    manifest itself is read only if the file opened lies inside them.
    """
    text = read_within(manifest, roots).decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or "path" not in reader.fieldnames:
        raise NoImages(
            f"{manifest}: a manifest needs a header row with a `path` column "
            f"(found {', '.join(reader.fieldnames or []) or 'no header'})"
        )
    items = []
    for row in reader:
        where = (row.pop("path") or "").strip()
        if not where:
            continue
        resolved = Path(where) if Path(where).is_absolute() else manifest.parent / where
        items.append(SourceItem(str(resolved), {k: v for k, v in row.items() if k and v not in (None, "")}, roots))
    if not items:
        raise NoImages(f"{manifest}: the manifest lists no images (add rows with a `path`)")
    return items
