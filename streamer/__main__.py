"""`python -m streamer` is the same as the `yolostream` command."""

from streamer.cli.main import main

raise SystemExit(main())
