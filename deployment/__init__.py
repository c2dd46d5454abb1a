"""What every process of a deployment shares, below its edges: configuration and the service it runs on.

`config` reads the environment (`Config`); `services` opens the configured store and
builds the service on it. The edges (`app/`: API, CLI, web; `workers/`: Celery) import
from here and never from each other's internals in the other direction: `app` may
compose `workers` (it starts them and sends them jobs), `workers` never imports `app`.
`indexing/` imports none of them.
"""
