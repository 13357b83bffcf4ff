"""A CURVE key directory made by ``yolostream keys``, for the tests of CURVE (tests/output/test_curve.py)
and of ``yolostream subscribe`` with keys (tests/cli/test_subscribe.py)."""

from __future__ import annotations

import io
from pathlib import Path

from streamer.cli.keys import make_keys
from streamer.config import CurveConfig, PublishConfig
from streamer.output.security import CurveClient


class Keys:
    """A key directory made by `yolostream keys`: the server pair and subscribers alice and bob."""

    def __init__(self, root: Path) -> None:
        assert make_keys(root, ["alice", "bob"], force=False, out=io.StringIO()) == 0
        self.root = root
        self.server_secret = root / "server.key_secret"
        self.server_public = root / "server.key"
        self.authorized = root / "authorized_clients"

    def client(self, name: str) -> CurveClient:
        return CurveClient.from_files(self.server_public, self.root / "clients" / f"{name}.key_secret")

    def config(self, endpoint: str = "tcp://127.0.0.1:*", **curve: object) -> PublishConfig:
        fields = {"server_secret_key_file": self.server_secret, "authorized_clients": [self.authorized]}
        return PublishConfig(endpoint=endpoint, curve=CurveConfig.model_validate({**fields, **curve}))
