"""`RedisJobBoard`: job status in Redis, so the API, the CLI and every worker read the same thing.

The embedded store admits one process, so job status cannot live there once
work is spread over processes: `nominal jobs` in one shell must see a re-index
that another process is running.

Keys (under the deployment's prefix):

    nominal:job:<id>            the job, JSON
    nominal:job:<id>:cancel     present once a cancel was asked: kept apart so a
                                progress update racing a cancel cannot erase it
    nominal:job:<id>:alive      present while the process running the job lives: it
                                refreshes the key, which expires `liveness_s` after
                                its last refresh; a running job without it is read
                                as failed, "interrupted: ...". That is how a worker
                                killed mid-job (whole jobs are acknowledged on
                                receipt) or a dead API process shows up.
    nominal:jobs                sorted set of job ids by creation time
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace

import redis

from indexing.errors import StoreUnavailable
from indexing.jobs import Job, interrupted

# Finished jobs are forgotten after this long; running ones are re-saved at each batch.
JOB_TTL_S = 30 * 24 * 3600
# How long after its process died a running job is reported interrupted; refreshed 6 times as often.
LIVENESS_S = 30.0

log = logging.getLogger(__name__)


class RedisJobBoard:
    """A `JobBoard` on Redis.

    Args:
        client: a Redis client (`decode_responses` not needed).
        prefix: prepended to every key; lets deployments and tests share one Redis.
        liveness_s: how long the `heartbeat` of a job this process runs outlives the process.
    """

    def __init__(self, client: redis.Redis, prefix: str = "", *, liveness_s: float = LIVENESS_S) -> None:
        self._redis = client
        self._prefix = prefix
        self.liveness_s = liveness_s

    @classmethod
    def from_url(cls, url: str, prefix: str = "", *, liveness_s: float = LIVENESS_S) -> "RedisJobBoard":
        return cls(redis.Redis.from_url(url), prefix, liveness_s=liveness_s)

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
        key = self._key(job_id)
        try:
            raw, cancel, alive = self._redis.mget(key, key + ":cancel", key + ":alive")
        except redis.RedisError as error:
            raise _unavailable(error) from error
        if raw is None:
            return None
        job = Job.from_dict(json.loads(raw))
        if cancel and not job.cancel_requested:
            job = replace(job, cancel_requested=True)
        if job.state == "running" and alive is None:
            # Its process died. Written back, so the job ends once for every reader; a process
            # that was only late (no beat for `liveness_s`) overwrites this at its next report.
            job = interrupted(job)
            self.put(job)
        return job

    def list(self, *, limit: int = 50) -> list[Job]:
        try:
            ids = self._redis.zrevrange(self._index, 0, limit - 1)
        except redis.RedisError as error:
            raise _unavailable(error) from error
        jobs = [self.get(i.decode()) for i in ids]
        return [job for job in jobs if job is not None]

    @contextmanager
    def heartbeat(self, job_id: str) -> Iterator[None]:
        """Keep the job's `:alive` key while the block runs, from a background thread; delete it after."""
        key = self._key(job_id) + ":alive"
        expiry_ms = max(1, int(self.liveness_s * 1000))
        try:
            self._redis.set(key, "1", px=expiry_ms)
        except redis.RedisError as error:
            raise _unavailable(error) from error
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.liveness_s / 6):
                try:
                    self._redis.set(key, "1", px=expiry_ms)
                except redis.RedisError as error:  # Redis briefly away: the next beat tries again
                    log.warning("job %s: heartbeat not written (%s)", job_id, error)

        beater = threading.Thread(target=beat, name=f"nominal-heartbeat-{job_id[:8]}", daemon=True)
        beater.start()
        try:
            yield
        finally:
            stop.set()
            beater.join()
            try:
                self._redis.delete(key)
            except redis.RedisError:
                pass  # it expires by itself; the job's final state is written already

    @property
    def _index(self) -> str:
        return f"{self._prefix}nominal:jobs"

    def _key(self, job_id: str) -> str:
        return f"{self._prefix}nominal:job:{job_id}"


def _unavailable(error: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"job board on Redis unreachable ({error}): check REDIS_URL and that Redis is running")
