"""`Config` lives in `deployment.config` (workers read it too); imported here for the edges."""

from deployment.config import Config, get_config  # noqa: F401
