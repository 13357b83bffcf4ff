"""ZeroMQ CURVE for the publisher and its subscribers: their keys, and whom the publisher admits.

With CURVE the publisher's XPUB socket is a CURVE server: every connection is encrypted, and a ZAP
handler (pyzmq's `ThreadAuthenticator`, in the publisher's own context) admits only clients whose public
key is authorised. A subscriber needs the server's public key and its own key pair (`CurveClient`).

The keys come from ZeroMQ's certificate files (``NAME.key``, ``NAME.key_secret``), read and written by
`streamer.output.key_files`; ``yolostream keys`` makes them (`streamer.cli.keys`).

The authorised client keys (`AuthorizedClients`) are read when the publisher starts, and read again
whenever one of the configured files or directories changes: a key added to or removed from the directory
applies to the next connection, without a restart. A subscriber that is already connected stays connected
(ZeroMQ authenticates at the handshake only).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
import zmq.auth

from streamer.output.key_files import (
    KeyFileError,
    check_curve,
    read_certificate,
    read_secret_certificate,
    z85_key,
)

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

    from streamer.config import CurveConfig

__all__ = [
    "ZAP_DOMAIN",
    "AuthorizedClients",
    "CurveClient",
    "CurveServer",
    "is_local_endpoint",
    "start_authenticator",
]

log = logging.getLogger(__name__)

ZAP_DOMAIN = "yolostream"
"""The ZAP domain of the publisher's socket (with ``ZAP_ENFORCE_DOMAIN``: no handler, no connection)."""
_REFUSAL_LOG_INTERVAL = 60.0  # seconds between two log lines about the same refused key


# ------------------------------------------------------------------------------------------------ client


@dataclass(frozen=True)
class CurveClient:
    """A subscriber's CURVE keys (Z85-encoded): the server's public key and the client's own key pair.

    Build it with `from_files` (the certificate files that ``yolostream keys`` writes) or `from_keys`.
    """

    server_public_key: bytes
    public_key: bytes
    secret_key: bytes = field(repr=False)

    @classmethod
    def from_keys(
        cls,
        server_public_key: bytes | str,
        secret_key: bytes | str | None = None,
        public_key: bytes | str | None = None,
    ) -> CurveClient:
        """Keys given directly, as Z85 text.

        Parameters:
            server_public_key: the publisher's public key (the ``public-key`` of its ``server.key``).
            secret_key: this client's secret key; None makes a throwaway key pair, which only a publisher
                with ``allow_any_client`` accepts.
            public_key: this client's public key; derived from `secret_key` when None.

        Raises:
            ValueError: a key is not a 40-character Z85 key, or the public key does not match the secret.
        """
        check_curve()
        server = z85_key(server_public_key, "the server's public key")
        if secret_key is None:
            if public_key is not None:
                raise ValueError("a client public key without its secret key")
            public, secret = zmq.curve_keypair()
            return cls(server, public, secret)
        secret = z85_key(secret_key, "the client's secret key")
        public = zmq.curve_public(secret)
        if public_key is not None and z85_key(public_key, "the client's public key") != public:
            raise ValueError("the client's public key does not belong to its secret key")
        return cls(server, public, secret)

    @classmethod
    def from_files(
        cls, server_key: str | os.PathLike[str], client_key: str | os.PathLike[str] | None = None
    ) -> CurveClient:
        """Keys from certificate files.

        Parameters:
            server_key: the publisher's public certificate (``server.key``).
            client_key: this client's secret certificate (``NAME.key_secret``); None makes a throwaway key
                pair, which only a publisher with ``allow_any_client`` accepts.

        Raises:
            KeyFileError: a file is missing, unreadable or not a certificate of the right kind.
        """
        check_curve()
        server, _ = read_certificate(server_key)
        if client_key is None:
            return cls.from_keys(server)
        public, secret = read_secret_certificate(client_key)
        return cls(server, public, secret)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make `sock` a CURVE client of the server (before it connects)."""
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)


# ------------------------------------------------------------------------------------------------ server


def _key_files(entry: Path) -> list[Path]:
    return sorted(entry.glob("*.key")) if entry.is_dir() else [entry]


class AuthorizedClients:
    """The public keys of the subscribers a CURVE publisher admits, from files and directories.

    A directory contributes every ``*.key`` file in it (not its subdirectories; ``*.key_secret`` files
    are not read). The keys are re-read whenever a file or directory changes (checked at each handshake,
    i.e. a few ``stat`` calls per connection attempt). At construction every problem is fatal; a problem
    found when re-reading is logged and that file is left out, so that a removed key is never kept.

    Serves as pyzmq's CURVE credentials provider (`callback`).
    """

    def __init__(self, paths: Sequence[str | os.PathLike[str]]) -> None:
        """Read the keys.

        Raises:
            KeyFileError: a path does not exist, or a key file in it cannot be read.
        """
        self.paths = tuple(Path(p) for p in paths)
        self._lock = threading.Lock()
        self._refused_logged: dict[bytes, float] = {}
        for entry in self.paths:
            if not entry.exists():
                raise KeyFileError(f"authorised CURVE client keys: {entry} does not exist")
        self._signature = self._stat()
        self._keys = self._read(strict=True)
        if not self._keys:
            log.warning(
                "no authorised CURVE client keys in %s: no subscriber can connect until one is added",
                ", ".join(map(str, self.paths)),
            )

    @property
    def keys(self) -> frozenset[bytes]:
        """The authorised public keys (Z85)."""
        return self._keys

    def _stat(self) -> tuple[object, ...]:
        out: list[object] = []
        for entry in self.paths:
            try:
                out.append((entry, entry.stat().st_mtime_ns))
                for file in _key_files(entry):
                    info = file.stat()
                    out.append((file, info.st_mtime_ns, info.st_size, info.st_ino))
            except OSError:
                out.append((entry, None))
        return tuple(out)

    def _read(self, strict: bool) -> frozenset[bytes]:
        keys: set[bytes] = set()
        for entry in self.paths:
            try:
                files = _key_files(entry)
            except OSError as exc:
                if strict:
                    raise KeyFileError(f"cannot list {entry}: {exc.strerror or exc}") from None
                log.error("authorised CURVE client keys: cannot list %s: %s", entry, exc.strerror or exc)
                continue
            for file in files:
                try:
                    public, secret = read_certificate(file)
                except KeyFileError as exc:
                    if strict:
                        raise
                    log.error("%s; that key is not authorised", exc)
                    continue
                if secret is not None and strict:
                    log.warning(
                        "%s holds a client's secret key: the publisher needs only the public .key file",
                        file,
                    )
                keys.add(public)
        return frozenset(keys)

    def reload(self) -> None:
        """Re-read every key file now (a problem leaves that file out and is logged)."""
        with self._lock:
            self._signature = self._stat()
            before, self._keys = self._keys, self._read(strict=False)
        if before != self._keys:
            log.info(
                "authorised CURVE client keys re-read: %d key(s) (%d added, %d removed)",
                len(self._keys),
                len(self._keys - before),
                len(before - self._keys),
            )

    def allows(self, public_key: bytes) -> bool:
        """Whether `public_key` (Z85) is authorised, re-reading the files first if they changed."""
        if self._stat() != self._signature:
            self.reload()
        return public_key in self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        """pyzmq's credentials-provider hook: admit `key` (Z85) or not (a refusal is logged)."""
        allowed = self.allows(key)
        if not allowed:
            # A refused client retries: one line per key and minute is enough.
            now = time.monotonic()
            if now - self._refused_logged.get(key, -_REFUSAL_LOG_INTERVAL) >= _REFUSAL_LOG_INTERVAL:
                if len(self._refused_logged) > 1000:
                    self._refused_logged.clear()
                self._refused_logged[key] = now
                log.warning(
                    "refused a subscriber whose CURVE public key %s is not authorised",
                    key.decode("ascii", "replace"),
                )
        return allowed


@dataclass(frozen=True)
class CurveServer:
    """The publisher's CURVE keys and whom it admits (`clients` None: any client that has the server key)."""

    public_key: bytes
    secret_key: bytes = field(repr=False)
    clients: AuthorizedClients | None

    @classmethod
    def from_config(cls, cfg: CurveConfig) -> CurveServer:
        """Read the files a ``publish.curve`` section names.

        Raises:
            KeyFileError: a file is missing, unreadable or not a certificate (the message names it).
        """
        check_curve()
        public, secret = read_secret_certificate(cfg.server_secret_key_file)
        clients = None if cfg.allow_any_client else AuthorizedClients(cfg.authorized_clients)
        return cls(public, secret, clients)

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make `sock` a CURVE server whose handshakes go to the ZAP handler (before it binds)."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN.encode())
        # Without a ZAP handler, libzmq would admit every client: with this it admits none.
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def start_authenticator(context: zmq.Context[zmq.Socket[bytes]], server: CurveServer) -> ThreadAuthenticator:
    """Start the ZAP handler of `context` (one per context) for `server`'s policy; stop it with ``stop()``.

    Raises:
        zmq.ZMQError: the context already has a ZAP handler (``EADDRINUSE``).
    """
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(context, log=logging.getLogger("zmq.auth"))
    auth.start()
    if server.clients is None:
        auth.configure_curve(domain=ZAP_DOMAIN, location=zmq.auth.CURVE_ALLOW_ANY)
    else:
        auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=server.clients)
    return auth


def is_local_endpoint(endpoint: str) -> bool:
    """Whether only this host can connect to `endpoint`: ``ipc://``, ``inproc://`` or a loopback address."""
    transport, _, address = endpoint.partition("://")
    if transport != "tcp":
        return transport in ("ipc", "inproc")
    host = address.rpartition(":")[0].strip("[]")
    if host in ("localhost", "lo"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # `*`, an interface name, a host name
        return False
