"""Locks on a machine setting, so writers in several processes on one shared store do not race.

A setting's record, its version numbering (max + 1) and its alias are read,
changed and written back in several store calls; a Qdrant server applies each
call atomically but nothing across calls. Every such read-modify-write holds
the setting's lock:

- `LocalLocks`: one re-entrant lock per setting in this process. Enough for the
  embedded store, which admits one process.
- `RedisLocks`: a lease in Redis (SET NX PX, released by token; renewed while
  held, so a long hold outlives the lease and a dead holder's lease expires).
  What a store shared by several processes (QDRANT_URL) needs; the app builds
  it from REDIS_URL.

Both are re-entrant per thread, so a locked method may call another. Keys are
`setting:<name>` for short record updates and `reindex:<name>` for a whole
re-index (one at a time per setting; the next one waits).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

from indexing.errors import StoreUnavailable

log = logging.getLogger(__name__)

# Called while waiting for a lock another holder has; may raise to stop waiting (a job's cancel).
Waiting = Callable[[], None]


class SettingLocks(Protocol):
    def hold(self, key: str, *, waiting: Waiting | None = None) -> AbstractContextManager[None]:
        """Hold the lock named `key` for the block; re-entrant in one thread.

        Without `waiting`, gives up with `StoreUnavailable` after the implementation's
        wait limit; with it, waits as long as it takes, calling `waiting` now and then.
        """
        ...


class LocalLocks:
    """One re-entrant lock per key, in this process."""

    def __init__(self) -> None:
        self._locks: defaultdict[str, threading.RLock] = defaultdict(threading.RLock)
        self._guard = threading.Lock()

    @contextmanager
    def hold(self, key: str, *, waiting: Waiting | None = None) -> Iterator[None]:
        with self._guard:
            lock = self._locks[key]
        while not lock.acquire(timeout=0.5):
            if waiting is not None:
                waiting()
        try:
            yield
        finally:
            lock.release()


class RedisLocks:
    """Leases in Redis: one holder across every process that shares the Redis and the prefix.

    Args:
        client: a redis-py client.
        prefix: prepended to every key (the deployment's NOMINAL_REDIS_PREFIX).
        lease_s: how long a lease outlives a holder that stopped renewing it (died).
        wait_s: how long `hold` without `waiting` waits before giving up.
    """

    def __init__(self, client, prefix: str = "", *, lease_s: float = 30.0, wait_s: float = 120.0) -> None:  # noqa: ANN001
        self._redis = client
        self._prefix = prefix
        self.lease_s = lease_s
        self.wait_s = wait_s
        self._local = threading.local()

    @classmethod
    def from_url(cls, url: str, prefix: str = "", **kwargs: float) -> "RedisLocks":
        import redis

        return cls(redis.Redis.from_url(url), prefix, **kwargs)

    @contextmanager
    def hold(self, key: str, *, waiting: Waiting | None = None) -> Iterator[None]:
        import redis
        from redis.exceptions import LockError

        depth: dict[str, int] = self._local.__dict__.setdefault("depth", {})
        if depth.get(key):
            depth[key] += 1
            try:
                yield
            finally:
                depth[key] -= 1
            return
        name = f"{self._prefix}nominal:lock:{key}"
        lock = self._redis.lock(name, timeout=self.lease_s, thread_local=False)
        deadline = time.monotonic() + self.wait_s
        try:
            while not lock.acquire(blocking=True, blocking_timeout=0.5):
                if waiting is not None:
                    waiting()
                elif time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"{key} stayed locked by another process for {self.wait_s:.0f} s; try again "
                        f"(a holder that died frees it within {self.lease_s:.0f} s)"
                    )
        except redis.RedisError as error:
            raise StoreUnavailable(f"lock {key} in Redis unreachable ({error}): check REDIS_URL") from error
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(self.lease_s / 3):
                try:
                    lock.reacquire()
                except (LockError, redis.RedisError) as error:  # noqa: PERF203 - Redis briefly away: try again
                    log.warning("lock %s not renewed (%s)", key, error)

        renewer = threading.Thread(target=renew, name=f"nominal-lock-{key[:24]}", daemon=True)
        renewer.start()
        depth[key] = 1
        try:
            yield
        finally:
            depth[key] = 0
            stop.set()
            renewer.join()
            try:
                lock.release()
            except (LockError, redis.RedisError):
                pass  # expired or Redis away: the lease ends by itself
