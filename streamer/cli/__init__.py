"""The `yolostream` command: argument parsing and the command bodies."""
