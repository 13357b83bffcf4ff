"""Load a YAML config into plain data, remembering the line of every key, with `${VAR}` interpolation.

PyYAML's `safe_load` forgets where things came from and silently keeps the last of two equal keys. Here
the document is *composed* into nodes (which carry their position) and converted by hand, so that:

* `YamlDocument.lines` maps each key path, e.g. ``("sources", 1, "fps_limit")``, to its 1-based line
  (the key's line for a mapping entry, the item's line for a list item);
* a key repeated in one mapping is a `ConfigProblem`, not a silent override;
* `${VAR}` and `${VAR:-default}` in string scalars are replaced from the environment, `${file:PATH}` by
  the contents of a (secret) file, and `$${` gives a literal `${`. A plain (unquoted) scalar that is
  exactly one `${...}` is re-typed after the substitution, so `fps_limit: ${FPS}` gives a number. An
  undefined variable without a default, or a file that cannot be read, is a `ConfigProblem`.

Problems that do not stop the conversion are collected in `YamlDocument.problems`; a syntax error, an
empty document or a top level that is not a mapping raise `ConfigError` at once.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from streamer.errors import ConfigError, ConfigProblem

KeyPath = tuple[str | int, ...]

_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
# `$${` (escape), `${...}` (a reference), or a `${` that is never closed.
_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_VARIABLE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?", re.DOTALL)
_WHOLE_REFERENCE = re.compile(r"\$\{[^}]*\}")
_FILE_PREFIX = "file:"
_SECRET_FILE_LIMIT = 64 * 1024  # bytes: a secret file holds one value (a password, a token)
MAX_VALUES = 100_000
"""Values (mappings, lists, scalars) a document may expand to: aliases are expanded where they are used,
so a 1 KB file of nested aliases can stand for billions of values (a "billion laughs")."""
MAX_DEPTH = 64
"""Levels of nested mappings and lists a document may have."""


class _TooLarge(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


def format_key(path: KeyPath) -> str:
    """``("sources", 1, "fps_limit")`` → ``sources[1].fps_limit``; ``()`` → ``""``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def data_path(loc: tuple[Any, ...], data: Any, missing: bool) -> KeyPath:
    """The key path of a validation error: the parts of pydantic's `loc` that are keys or indices in `data`.

    Pydantic adds names of union members or validator functions (``'int'``, ``'function-after[...]'``);
    those are not in the data and are dropped. A missing key's name is kept (it is the last part).
    """
    out: list[str | int] = []
    current = data
    for i, part in enumerate(loc):
        is_key = isinstance(current, dict) and isinstance(part, str) and part in current
        is_index = isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current)
        if is_key or is_index:
            out.append(part)
            current = current[part]
        elif missing and i == len(loc) - 1 and isinstance(part, str):
            out.append(part)
    return tuple(out)


@dataclass
class YamlDocument:
    """The converted document: plain data (dicts, lists, scalars), key lines and non-fatal problems."""

    data: dict[str, Any]
    lines: dict[KeyPath, int] = field(default_factory=dict)
    problems: list[ConfigProblem] = field(default_factory=list)

    def line_of(self, path: KeyPath) -> int | None:
        """The line of `path`, or of its nearest ancestor that is in the file (e.g. for a missing key)."""
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


def load_yaml(text: str, filename: str, env: Mapping[str, str], base_dir: Path | None = None) -> YamlDocument:
    """Parse `text` (the contents of `filename`) into a `YamlDocument`, substituting variables from `env`.

    `base_dir` is the directory that a relative `${file:PATH}` is relative to (the current one if None).
    Raises `ConfigError` for a YAML syntax error, an empty document or a top level that is not a mapping.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:  # PyYAML's composer recurses per level: thousands of nested [ or {
        raise ConfigError(
            filename,
            [ConfigProblem("", 1, f"the document is nested too deeply (more than {MAX_DEPTH} levels)")],
        ) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (a control character)
        at = text.count("\n", 0, exc.position) + 1
        raise ConfigError(filename, [ConfigProblem("", at, f"YAML error: {exc.reason}")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = f"YAML syntax error: {exc.problem or exc.context}"
        if exc.context and exc.problem:
            where = exc.context_mark
            on_line = f" on line {where.line + 1}" if where is not None and where.line + 1 != line else ""
            message += f" ({exc.context}{on_line})"
        if exc.context == "expected a single document in the stream":
            message = "the file must hold a single YAML document, but found a second one ('---')"
        if "\\t" in message:
            message += "; indent with spaces, not tabs"
        raise ConfigError(filename, [ConfigProblem("", line, message)]) from None
    except yaml.YAMLError as exc:  # e.g. a reader error (a control character in the file)
        raise ConfigError(filename, [ConfigProblem("", 1, f"YAML error: {exc}")]) from None
    if root is None:
        raise ConfigError(
            filename,
            [ConfigProblem("", 1, "the file is empty; a config needs at least model and sources")],
        )
    if not isinstance(root, yaml.MappingNode):
        got = "a list" if isinstance(root, yaml.SequenceNode) else f"the scalar {root.value!r}"
        raise ConfigError(
            filename,
            [
                ConfigProblem(
                    "",
                    _line(root),
                    f"the top level must be a mapping of sections (model:, sources:, ...), got {got}",
                )
            ],
        )
    converter = _Converter(env, base_dir if base_dir is not None else Path.cwd())
    try:
        data = converter.convert(root, ())
    except _TooLarge as exc:
        raise ConfigError(filename, [ConfigProblem("", exc.line, exc.message)]) from None
    return YamlDocument(data, converter.lines, converter.problems)


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _Converter:
    """Turns composed nodes into plain data, recording lines and problems as it goes."""

    def __init__(self, env: Mapping[str, str], base_dir: Path) -> None:
        self.env = env
        self.base_dir = base_dir
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[ConfigProblem] = []
        self._constructor = yaml.SafeLoader("")  # only used to build scalars from their resolved tag
        self._active: set[int] = set()  # nodes being converted, to stop a recursive alias
        self._values = 0

    def problem(self, path: KeyPath, line: int, message: str) -> None:
        self.problems.append(ConfigProblem(format_key(path), line, message))

    def convert(self, node: yaml.Node, path: KeyPath) -> Any:
        self._values += 1
        if self._values > MAX_VALUES:
            raise _TooLarge(
                _line(node), f"the document expands to more than {MAX_VALUES:,} values (nested YAML aliases?)"
            )
        if len(path) > MAX_DEPTH:
            raise _TooLarge(_line(node), f"the document is nested too deeply (more than {MAX_DEPTH} levels)")
        self.lines.setdefault(path, _line(node))
        if id(node) in self._active:
            self.problem(path, _line(node), "a YAML alias refers to a node that contains it")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path)
            if isinstance(node, yaml.SequenceNode):
                return [self.convert(item, (*path, i)) for i, item in enumerate(node.value)]
            return self._scalar(node, path)
        finally:
            self._active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first_line: dict[str, int] = {}
        merged: dict[str, Any] = {}  # keys from `<<: *anchor`; explicit keys override them
        merged_lines: dict[KeyPath, int] = {}  # their lines (in the anchor), kept apart until the end
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if not isinstance(source, yaml.MappingNode):
                        self.problem(
                            path, _line(key_node), "'<<' must merge a mapping (an anchor like *defaults)"
                        )
                        continue
                    saved, self.lines = self.lines, {}  # record the anchor's lines apart
                    mapping = self.convert(source, path)
                    source_lines, self.lines = self.lines, saved
                    for key, item in mapping.items():  # the first merged mapping wins, as in YAML
                        merged.setdefault(key, item)
                    for sub_path, line in source_lines.items():
                        merged_lines.setdefault(sub_path, line)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self.problem(path, _line(key_node), "a key must be a plain name, not a list or mapping")
                continue
            # The key's text as written: `on:` or `yes:` stay strings instead of YAML 1.1 booleans.
            key = str(key_node.value)
            key_path = (*path, key)
            if key in first_line:
                self.problem(
                    key_path,
                    _line(key_node),
                    f"duplicate key '{key}' (first given on line {first_line[key]}); remove one of them",
                )
                continue
            first_line[key] = _line(key_node)
            self.lines[key_path] = _line(key_node)  # the key's line, not its value's
            out[key] = self.convert(value_node, key_path)
        for sub_path, line in merged_lines.items():
            if len(sub_path) > len(path) and sub_path[len(path)] not in out:
                self.lines.setdefault(sub_path, line)
        return {**merged, **out}

    def _scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        if node.tag == _STR_TAG and "${" in node.value:
            text = self._interpolate(node.value, path, _line(node))
            if node.style is None and _WHOLE_REFERENCE.fullmatch(node.value):
                # Re-type a plain `${VAR}` as if its value had been written in the file: 12 → int.
                tag = self._constructor.resolve(yaml.ScalarNode, text, (True, False))
                node = yaml.ScalarNode(tag, text, node.start_mark, node.end_mark)
            else:
                return text
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:  # e.g. an unknown tag such as `!secret`
            self.problem(path, _line(node), f"cannot read this value: {getattr(exc, 'problem', exc)}")
            return None
        except (ValueError, OverflowError):  # e.g. an integer of thousands of digits (Python's limit)
            self.problem(
                path, _line(node), f"cannot read this value: a number of {len(node.value)} characters"
            )
            return None

    def _interpolate(self, text: str, path: KeyPath, line: int) -> str:
        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$${":
                return "${"
            inner = match.group(1)
            if inner is not None and inner.startswith(_FILE_PREFIX):
                return self._read_secret(inner[len(_FILE_PREFIX) :].strip(), path, line)
            parsed = _VARIABLE.fullmatch(inner) if inner is not None else None
            if parsed is None:
                self.problem(
                    path,
                    line,
                    f"bad variable reference {match.group(0)!r}: use ${{NAME}}, ${{NAME:-default}} "
                    "or ${file:PATH}",
                )
                return match.group(0)
            name, default = parsed.group(1), parsed.group(2)
            value = self.env.get(name)
            if value:
                return value
            if default is not None:  # like the shell, an empty variable also takes the default
                return default
            if value is None:
                self.problem(
                    path, line, f"environment variable '{name}' is not set (and ${{{name}}} has no :-default)"
                )
            return ""

        return _REFERENCE.sub(replace, text)

    def _read_secret(self, name: str, path: KeyPath, line: int) -> str:
        """The contents of the file `name` for `${file:...}`, without its trailing newline.

        Reading a file while validating breaks the rule that validation does no I/O, on purpose: this is
        loading (like reading the environment), the file is small, and a secret that cannot be read must
        be reported with the key and line that ask for it, as an unset variable is.
        """
        if not name:
            self.problem(path, line, "${file:} names no file: use ${file:/path/to/secret}")
            return ""
        file = Path(os.path.expanduser(name))
        if not file.is_absolute():
            file = self.base_dir / file
        try:
            # A regular file only: a FIFO or a device would block validation (and a reload) for ever.
            # O_NONBLOCK: a file replaced by a FIFO after the check does not block the open either.
            fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                self.problem(path, line, f"the secret file {file} (${{file:{name}}}) is not a regular file")
                return ""
            with os.fdopen(fd, "rb") as f:
                data = f.read(_SECRET_FILE_LIMIT + 1)
        except OSError as exc:
            self.problem(path, line, f"cannot read the secret file {file} (${{file:{name}}}): {exc.strerror}")
            return ""
        if len(data) > _SECRET_FILE_LIMIT:
            self.problem(
                path,
                line,
                f"the secret file {file} is larger than {_SECRET_FILE_LIMIT // 1024} KiB: ${{file:...}} "
                "reads one value, such as a password",
            )
            return ""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            self.problem(path, line, f"the secret file {file} is not UTF-8 text")
            return ""
        text = text.rstrip("\r\n")
        if not text:
            self.problem(path, line, f"the secret file {file} is empty")
        return text
