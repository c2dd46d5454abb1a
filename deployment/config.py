"""One place where Nominal reads its configuration (environment variables and .env).

`indexing/` never imports this: the edges read a `Config` and pass values in.
Named `Config`, not `Settings`, because "setting" is a domain word here (a
machine setting).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexing.backbones import DEFAULT_BACKBONE
from indexing.bank_cache import default_budget
from indexing.images import DEFAULT_MAX_PIXELS
from indexing.store.approximate import DEFAULT_APPROXIMATE_ABOVE


class Config(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    data: Path = Field(
        Path("nominal-data"),
        validation_alias=AliasChoices("NOMINAL_DATA"),
        description="Directory of the embedded store (used when QDRANT_URL is not set).",
    )
    qdrant_url: str | None = Field(None, validation_alias=AliasChoices("QDRANT_URL"), description="Qdrant server URL.")
    qdrant_api_key: str | None = Field(None, validation_alias=AliasChoices("QDRANT_API_KEY"))
    qdrant_shards: int | None = Field(
        None, validation_alias=AliasChoices("QDRANT_SHARDS"), gt=0,
        description="Shards of each new collection on a distributed Qdrant cluster.",
    )
    qdrant_replicas: int | None = Field(
        None, validation_alias=AliasChoices("QDRANT_REPLICAS"), gt=0,
        description="Copies of each shard on a distributed Qdrant cluster.",
    )
    backbone: str = Field(
        DEFAULT_BACKBONE, validation_alias=AliasChoices("NOMINAL_BACKBONE"), description="Backbone of new settings."
    )
    weights_dir: Path | None = Field(
        None, validation_alias=AliasChoices("NOMINAL_WEIGHTS_DIR"), description="Directory holding model weight files."
    )
    device: str | None = Field(None, validation_alias=AliasChoices("NOMINAL_DEVICE"), description="cpu, cuda, cuda:1...")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, validation_alias=AliasChoices("NOMINAL_MAX_PIXELS"), gt=0)
    batch_size: int = Field(32, validation_alias=AliasChoices("NOMINAL_BATCH_SIZE"), gt=0)
    images_dir: Path | None = Field(
        None,
        validation_alias=AliasChoices("NOMINAL_IMAGES"),
        description="Where uploaded images are kept by SHA-256 (default: NOMINAL_DATA/images); shared with workers.",
    )
    api_keys: str = Field(
        "",
        validation_alias=AliasChoices("NOMINAL_API_KEYS"),
        description="Comma-separated KEY:ROLE pairs, ROLE read or admin (a bare KEY is admin). Empty: no auth, loopback only.",
    )
    source_roots: str = Field(
        "",
        validation_alias=AliasChoices("NOMINAL_SOURCE_ROOTS"),
        description=(
            "Directories (':'-separated) that re-index sources named over HTTP must lie in. "
            "Empty: re-index over HTTP is refused; `nominal reindex` on the server is not limited."
        ),
    )
    max_image_bytes: int = Field(
        25_000_000, validation_alias=AliasChoices("NOMINAL_MAX_IMAGE_BYTES"), gt=0, description="Upload limit per image."
    )
    max_request_bytes: int = Field(
        500_000_000, validation_alias=AliasChoices("NOMINAL_MAX_REQUEST_BYTES"), gt=0, description="Upload limit per request."
    )

    @property
    def image_root(self) -> Path:
        return self.images_dir or self.data / "images"

    @property
    def history_root(self) -> Path:
        return self.history_dir or self.data / "history"

    def source_root_paths(self) -> list[Path]:
        """`source_roots` as paths (empty entries dropped)."""
        return [Path(part) for part in self.source_roots.split(":") if part.strip()]

    def key_roles(self) -> dict[str, str]:
        """API key -> role, from `api_keys`; ValueError naming the bad entry."""
        roles: dict[str, str] = {}
        for entry in filter(None, (part.strip() for part in self.api_keys.split(","))):
            key, _, role = entry.partition(":")
            role = role or "admin"
            if not key or role not in ("read", "admin"):
                raise ValueError(f"NOMINAL_API_KEYS entry {entry!r} is not KEY:read or KEY:admin")
            roles[key] = role
        return roles
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("REDIS_URL"),
        description="Celery broker, result backend and job board; unset runs jobs in-process.",
    )
    redis_prefix: str = Field(
        "",
        validation_alias=AliasChoices("NOMINAL_REDIS_PREFIX"),
        description="Prefix of every Redis key (queues, job board), so deployments can share one Redis.",
    )
    visibility_timeout: int = Field(
        300,
        validation_alias=AliasChoices("NOMINAL_VISIBILITY_TIMEOUT"),
        gt=0,
        description="Seconds before a task taken by a worker that died is handed to another worker.",
    )
    history_dir: Path | None = Field(
        None, validation_alias=AliasChoices("NOMINAL_HISTORY"),
        description="Folder of the inspection history (SQLite and kept images); default NOMINAL_DATA/history.",
    )
    record_history: bool = Field(
        True, validation_alias=AliasChoices("NOMINAL_RECORD_HISTORY"), description="Record every verdict (false: off).",
    )
    keep_inspections_days: float = Field(
        90.0, validation_alias=AliasChoices("NOMINAL_KEEP_INSPECTIONS_DAYS"), gt=0,
        description="Recorded verdicts and their images older than this are deleted.",
    )
    max_inspection_bytes: int = Field(
        2_000_000_000, validation_alias=AliasChoices("NOMINAL_MAX_INSPECTION_BYTES"), ge=0,
        description="Bytes of kept inspection images; beyond it the oldest images are deleted (their rows stay).",
    )
    near_threshold: float = Field(
        0.1, validation_alias=AliasChoices("NOMINAL_NEAR_THRESHOLD"), ge=0,
        description="A verdict within this fraction of the threshold keeps its image (FAIL verdicts always do).",
    )
    review_per_hour: int = Field(
        60, validation_alias=AliasChoices("NOMINAL_REVIEW_PER_HOUR"), ge=0,
        description="Verdicts sampled into a setting's review queue per hour: half near the threshold, half FAIL (0: off).",
    )
    drift_window: int = Field(
        200, validation_alias=AliasChoices("NOMINAL_DRIFT_WINDOW"), gt=0,
        description="Drift compares the last this many verdicts of a setting with its calibration.",
    )
    drift_minutes: float | None = Field(
        None, validation_alias=AliasChoices("NOMINAL_DRIFT_MINUTES"), gt=0,
        description="Drift window in minutes instead (the verdicts of the last T minutes, at most NOMINAL_DRIFT_WINDOW).",
    )
    max_bank_bytes: int = Field(
        default_factory=default_budget, validation_alias=AliasChoices("NOMINAL_MAX_BANK_BYTES"), gt=0,
        description=(
            "Bytes of loaded patch banks a process holds, all settings together; least recently used banks are "
            "evicted and reloaded on demand. Default: a quarter of physical memory."
        ),
    )
    approximate_above: int = Field(
        DEFAULT_APPROXIMATE_ABOVE, validation_alias=AliasChoices("NOMINAL_APPROXIMATE_ABOVE"), ge=0,
        description=(
            "Collections holding more points are searched through an approximate index (IVF-SQ8 embedded, HNSW + "
            "int8 on a Qdrant server) whose candidates are rescored exactly; 0: always exact."
        ),
    )
    keep_versions: int = Field(
        2, validation_alias=AliasChoices("NOMINAL_KEEP_VERSIONS"), ge=0, description="Older versions kept for rollback."
    )

    @model_validator(mode="after")
    def _empty_is_unset(self) -> "Config":
        # Compose files often pass `QDRANT_URL=` to mean "not set".
        if self.qdrant_url is not None and not self.qdrant_url.strip():
            self.qdrant_url = None
        if self.redis_url is not None and not self.redis_url.strip():
            self.redis_url = None
        return self


@lru_cache
def get_config() -> Config:
    return Config()
