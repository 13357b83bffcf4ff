"""``yolostream subscribe``: print the messages of a publisher, one line each (the subscriber itself:
`streamer.output.client`; the line: `streamer.output.text`)."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from streamer.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from streamer.output.client import ReceiveTimeout, SubscribeError, Subscriber
from streamer.output.key_files import KeyFileError
from streamer.output.protocol import ProtocolError, to_json
from streamer.output.security import CurveClient
from streamer.output.text import format_message

QUIET_HINT_S = 10.0
"""`subscribe_main` says once that nothing has arrived yet after this many seconds."""


def _say_nothing_came(endpoint: str, sub: Subscriber) -> None:
    why = f" ({sub.handshake_error})" if sub.handshake_error else ""
    print(
        f"yolostream subscribe: nothing from {endpoint} in {QUIET_HINT_S:g} s{why}; is the daemon running "
        "and publishing there? (`yolostream status --config CONFIG`)",
        file=sys.stderr, flush=True,
    )  # fmt: skip


def subscribe_main(
    endpoint: str,
    streams: list[str] | None,
    raw_json: bool,
    limit: int | None,
    timeout: float | None,
    out: TextIO = sys.stdout,
    server_key: str | os.PathLike[str] | None = None,
    client_key: str | os.PathLike[str] | None = None,
) -> int:
    """Print the messages of a publisher, one line each (the ``yolostream subscribe`` command).

    Parameters:
        endpoint: the publisher's endpoint.
        streams: stream ids to print (exact match); None or empty for all.
        raw_json: print each message as one compact JSON line instead of a human-readable line.
        limit: stop after this many messages; None for no limit.
        timeout: stop when no message arrives for this many seconds; None waits for ever.
        out: where the lines go.
        server_key: the publisher's public CURVE certificate (``server.key``), for a CURVE publisher.
        client_key: this subscriber's secret CURVE certificate (``NAME.key_secret``); without it a
            throwaway key pair is used (admitted only by a publisher with ``allow_any_client``).

    Returns:
        The exit code: 0 after `limit` messages or on Ctrl-C (or when `out` is a closed pipe), 1 on
        timeout or error (explained on stderr), 2 for invalid arguments.
    """
    if (limit is not None and limit < 0) or (timeout is not None and timeout <= 0):
        print("yolostream subscribe: the limit must be >= 0 and the timeout > 0", file=sys.stderr)
        return EXIT_USAGE
    if client_key is not None and server_key is None:
        print("yolostream subscribe: --client-key needs --server-key (the publisher's key)", file=sys.stderr)
        return EXIT_USAGE
    try:
        curve = None if server_key is None else CurveClient.from_files(server_key, client_key)
        sub = Subscriber(endpoint, streams=streams or None, curve=curve, analytics=True)
    except (ValueError, KeyFileError, SubscribeError) as exc:
        print(f"yolostream subscribe: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, (ValueError, KeyFileError)) else EXIT_FAILURE
    which = ", ".join(streams) if streams else "every stream"
    print(
        f"yolostream subscribe: waiting for messages of {which} from {endpoint}", file=sys.stderr, flush=True
    )
    hinted = False
    try:
        with sub:
            while limit is None or sub.received < limit:
                try:
                    if hinted or sub.received or (timeout is not None and timeout <= QUIET_HINT_S):
                        msg = sub.recv(timeout)
                    else:  # one hint when a first message is long in coming (then wait as asked)
                        try:
                            msg = sub.recv(QUIET_HINT_S)
                        except ReceiveTimeout:
                            hinted = True
                            _say_nothing_came(endpoint, sub)
                            msg = sub.recv(None if timeout is None else timeout - QUIET_HINT_S)
                except ProtocolError as exc:
                    print(f"yolostream subscribe: skipping a message: {exc}", file=sys.stderr)
                    continue
                out.write((to_json(msg) if raw_json else format_message(msg)) + "\n")
                out.flush()
    except KeyboardInterrupt:
        return EXIT_OK
    except ReceiveTimeout:
        why = f": {sub.handshake_error}" if sub.handshake_error else ""
        print(f"yolostream subscribe: no message from {endpoint} for {timeout:g} s{why}", file=sys.stderr)
        return EXIT_FAILURE
    except SubscribeError as exc:
        print(f"yolostream subscribe: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except BrokenPipeError:
        # The reader went away (e.g. `yolostream subscribe | head`): not an error. Point stdout at
        # /dev/null so that the interpreter's final flush does not complain again.
        if out is sys.stdout:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        return EXIT_OK
    return EXIT_OK
