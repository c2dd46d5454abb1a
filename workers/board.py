"""`RedisJobBoard`: job status in Redis, so the API, the CLI and every worker read the same thing.

The embedded store admits one process, so job status cannot live there once
work is spread over processes: `nominal jobs` in one shell must see a re-index
that another process is running.

Keys (under the deployment's prefix):

    nominal:job:<id>            the job, JSON
    nominal:job:<id>:cancel     present once a cancel was asked: kept apart so a
                                progress update racing a cancel cannot erase it
    nominal:jobs                sorted set of job ids by creation time
"""

from __future__ import annotations

import json
from dataclasses import replace

import redis

from indexing.errors import StoreUnavailable
from indexing.jobs import Job

# Finished jobs are forgotten after this long; running ones are re-saved at each batch.
JOB_TTL_S = 30 * 24 * 3600


class RedisJobBoard:
    """A `JobBoard` on Redis.

    Args:
        client: a Redis client (`decode_responses` not needed).
        prefix: prepended to every key; lets deployments and tests share one Redis.
    """

    def __init__(self, client: redis.Redis, prefix: str = "") -> None:
        self._redis = client
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str = "") -> "RedisJobBoard":
        return cls(redis.Redis.from_url(url), prefix)

    def put(self, job: Job) -> None:
        try:
            with self._redis.pipeline() as pipe:
                pipe.set(self._key(job.id), json.dumps(job.to_dict()), ex=JOB_TTL_S)
                if job.cancel_requested:
                    pipe.set(self._key(job.id) + ":cancel", "1", ex=JOB_TTL_S)
                pipe.zadd(self._index, {job.id: job.created_at})
                pipe.execute()
        except redis.RedisError as error:
            raise _unavailable(error) from error

    def get(self, job_id: str) -> Job | None:
        try:
            raw, cancel = self._redis.mget(self._key(job_id), self._key(job_id) + ":cancel")
        except redis.RedisError as error:
            raise _unavailable(error) from error
        if raw is None:
            return None
        job = Job.from_dict(json.loads(raw))
        return replace(job, cancel_requested=True) if cancel and not job.cancel_requested else job

    def list(self, *, limit: int = 50) -> list[Job]:
        try:
            ids = self._redis.zrevrange(self._index, 0, limit - 1)
        except redis.RedisError as error:
            raise _unavailable(error) from error
        jobs = [self.get(i.decode()) for i in ids]
        return [job for job in jobs if job is not None]

    @property
    def _index(self) -> str:
        return f"{self._prefix}nominal:jobs"

    def _key(self, job_id: str) -> str:
        return f"{self._prefix}nominal:job:{job_id}"


def _unavailable(error: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"job board on Redis unreachable ({error}): check REDIS_URL and that Redis is running")
