"""session-audit: SSH-session-end events from NATS JetStream into PostgreSQL audit rows."""

import tomllib
from pathlib import Path

# The project runs from its source tree (uv installs only its dependencies), so the
# version is read where it is kept.
with (Path(__file__).resolve().parent.parent / "pyproject.toml").open("rb") as _file:
    __version__: str = tomllib.load(_file)["project"]["version"]
