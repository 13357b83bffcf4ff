"""ZeroMQ CURVE key files: reading certificates (`read_certificate`, `read_secret_certificate`) and writing
key pairs (`write_key_pair`, for ``yolostream keys``: `streamer.cli.keys`).

Keys live in ZeroMQ's certificate files (the format of ``zmq.auth.create_certificates``): ``NAME.key``
holds a public key, ``NAME.key_secret`` the public and the secret key. What CURVE does with them, on the
publisher and on its subscribers: `streamer.output.security`.
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import stat
from pathlib import Path

import zmq
import zmq.auth

from streamer.errors import YolostreamError

__all__ = [
    "KeyFileError",
    "check_curve",
    "read_certificate",
    "read_secret_certificate",
    "write_key_pair",
    "z85_key",
]

log = logging.getLogger(__name__)

_Z85_KEY = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")


class KeyFileError(YolostreamError, OSError):
    """A CURVE key file is missing, unreadable or not a ZeroMQ certificate (the message names the file)."""


def check_curve() -> None:
    """Raise YolostreamError when this libzmq cannot do CURVE (before any key is made or used)."""
    if not zmq.has("curve"):
        raise YolostreamError(
            f"this libzmq ({zmq.zmq_version()}) was built without CURVE support; install pyzmq's wheel, "
            "which bundles a libzmq with it"
        )


def z85_key(key: bytes | str, what: str) -> bytes:
    """`key` as Z85 bytes, checked to be a 40-character CURVE key.

    Raises:
        ValueError: it is not (the message starts with `what`).
    """
    raw = key.encode("ascii", "replace") if isinstance(key, str) else key
    if not _Z85_KEY.fullmatch(raw):
        raise ValueError(f"{what} must be a 40-character Z85 CURVE key, got {len(raw)} characters")
    return raw


# ------------------------------------------------------------------------------------------ reading


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
        public = z85_key(public, "its public-key")
        if secret_key is not None:
            secret_key = z85_key(secret_key, "its secret-key")
    except ValueError as exc:
        raise KeyFileError(f"CURVE key file {name}: {exc}") from None
    return public, secret_key, stat.S_IMODE(info.st_mode)


# ------------------------------------------------------------------------------------------ writing

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
    check_curve()
    public, secret = zmq.curve_keypair()
    for file in (public_file, secret_file):
        file.parent.mkdir(parents=True, exist_ok=True, mode=0o700 if file.name.endswith("_secret") else 0o755)
    _write(public_file, _certificate(public, None), 0o644, force)
    _write(secret_file, _certificate(public, secret), 0o600, force)
