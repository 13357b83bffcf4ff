"""ZeroMQ CURVE for the publisher and its subscribers: key files, client authorisation, key generation.

With CURVE the publisher's XPUB socket is a CURVE server: every connection is encrypted, and a ZAP
handler (pyzmq's `ThreadAuthenticator`, in the publisher's own context) admits only clients whose public
key is authorised. A subscriber needs the server's public key and its own key pair (`CurveClient`).

Keys live in ZeroMQ's certificate files (the format of ``zmq.auth.create_certificates``): ``NAME.key``
holds a public key, ``NAME.key_secret`` the public and the secret key. ``yolostream keys`` writes them
(`write_key_pair`, `streamer.cli.keys`).

The authorised client keys (`AuthorizedClients`) are read when the publisher starts, and read again
whenever one of the configured files or directories changes: a key added to or removed from the directory
applies to the next connection, without a restart. A subscriber that is already connected stays connected
(ZeroMQ authenticates at the handshake only).
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
import zmq.auth

from streamer.errors import YolostreamError

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

    from streamer.config import CurveConfig

__all__ = [
    "ZAP_DOMAIN",
    "AuthorizedClients",
    "CurveClient",
    "CurveServer",
    "KeyFileError",
    "is_local_endpoint",
    "read_certificate",
    "read_secret_certificate",
    "start_authenticator",
    "write_key_pair",
]

log = logging.getLogger(__name__)

ZAP_DOMAIN = "yolostream"
"""The ZAP domain of the publisher's socket (with ``ZAP_ENFORCE_DOMAIN``: no handler, no connection)."""
_Z85_KEY = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_REFUSAL_LOG_INTERVAL = 60.0  # seconds between two log lines about the same refused key


class KeyFileError(YolostreamError, OSError):
    """A CURVE key file is missing, unreadable or not a ZeroMQ certificate (the message names the file)."""


def _check_curve() -> None:
    if not zmq.has("curve"):
        raise YolostreamError(
            f"this libzmq ({zmq.zmq_version()}) was built without CURVE support; install pyzmq's wheel, "
            "which bundles a libzmq with it"
        )


def _z85(key: bytes | str, what: str) -> bytes:
    raw = key.encode("ascii", "replace") if isinstance(key, str) else key
    if not _Z85_KEY.fullmatch(raw):
        raise ValueError(f"{what} must be a 40-character Z85 CURVE key, got {len(raw)} characters")
    return raw


def read_certificate(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None]:
    """Read a ZeroMQ certificate file: ``(public_key, secret_key)``, Z85-encoded.

    Parameters:
        path: a ``NAME.key`` (public) or ``NAME.key_secret`` file.

    Returns:
        The public key, and the secret key or None (a public ``.key`` file).

    Raises:
        KeyFileError: the file is missing, unreadable or not a certificate.
    """
    public, secret, _ = _read_certificate(path)
    return public, secret


def read_secret_certificate(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """Read a ``NAME.key_secret`` file: ``(public_key, secret_key)``, Z85-encoded.

    A file that other users can read is accepted with a logged warning.

    Raises:
        KeyFileError: the file is missing, unreadable, not a certificate, lacks the secret key, or its
            public key does not belong to its secret key.
    """
    public, secret, mode = _read_certificate(path)
    name = os.fspath(path)
    if secret is None:
        raise KeyFileError(
            f"CURVE key file {name} holds no secret key: give the NAME.key_secret file, not NAME.key"
        )
    if zmq.curve_public(secret) != public:
        raise KeyFileError(f"CURVE key file {name}: its public key does not belong to its secret key")
    if mode & 0o077:
        log.warning("CURVE secret key file %s can be read by other users (mode %o): chmod 600 it", name, mode)
    return public, secret


def _read_certificate(path: str | os.PathLike[str]) -> tuple[bytes, bytes | None, int]:
    name = os.fspath(path)
    try:
        info = os.stat(name)
        if stat.S_ISDIR(info.st_mode):
            raise KeyFileError(f"CURVE key file {name}: is a directory, not a certificate file")
        public, secret_key = zmq.auth.load_certificate(name)
    except KeyFileError:
        raise
    except OSError as exc:
        raise KeyFileError(f"cannot read CURVE key file {name}: {exc.strerror or exc}") from None
    except ValueError:  # no public-key line
        raise KeyFileError(
            f"CURVE key file {name} is not a ZeroMQ certificate (no public-key line); "
            "make one with `yolostream keys`"
        ) from None
    try:
        public = _z85(public, "its public-key")
        if secret_key is not None:
            secret_key = _z85(secret_key, "its secret-key")
    except ValueError as exc:
        raise KeyFileError(f"CURVE key file {name}: {exc}") from None
    return public, secret_key, stat.S_IMODE(info.st_mode)


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
        _check_curve()
        server = _z85(server_public_key, "the server's public key")
        if secret_key is None:
            if public_key is not None:
                raise ValueError("a client public key without its secret key")
            public, secret = zmq.curve_keypair()
            return cls(server, public, secret)
        secret = _z85(secret_key, "the client's secret key")
        public = zmq.curve_public(secret)
        if public_key is not None and _z85(public_key, "the client's public key") != public:
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
        _check_curve()
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
        _check_curve()
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


# ------------------------------------------------------------------------------------------ key files

_BANNER = """\
#   ****  Generated on {date} by yolostream keys  ****
#   ZeroMQ CURVE {kind} Certificate
#   {advice}

"""


def _certificate(public: bytes, secret: bytes | None) -> bytes:
    date = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
    if secret is None:
        text = _BANNER.format(date=date, kind="Public", advice="Give it to whoever must know this key.")
    else:
        text = _BANNER.format(
            date=date, kind="**Secret**", advice="DO NOT GIVE THIS FILE TO ANYONE nor change its mode."
        )
    text += f'metadata\ncurve\n    public-key = "{public.decode()}"\n'
    if secret is not None:
        text += f'    secret-key = "{secret.decode()}"\n'
    return text.encode()


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write `data` to `path` with exactly `mode`; never over an existing file unless `force`."""
    target = path.with_name(path.name + ".tmp") if force else path
    if force:
        target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # (the umask may have narrowed it)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if force:
        os.replace(target, path)


def write_key_pair(public_file: Path, secret_file: Path, force: bool) -> None:
    """A new CURVE key pair: `public_file` (mode 0644) and `secret_file` (0600), their folders made
    (0700 for secret ones); an existing file is replaced only with `force`."""
    _check_curve()
    public, secret = zmq.curve_keypair()
    for file in (public_file, secret_file):
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if file.name.endswith("_secret") else 0o755)
    _write(public_file, _certificate(public, None), 0o644, force)
    _write(secret_file, _certificate(public, secret), 0o600, force)
