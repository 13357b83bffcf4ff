"""Inert records: what every class a checkpoint names becomes, and the accessors that walk them.

`streamer.models.checkpoint` (the restricted unpickler, its allow-list, the tensors and the archive)
turns every global of the pickle that is neither allowed nor denied into a `Record` class, one per dotted
name; nothing is imported and no code from the file, or from the module it names, ever runs.

A pickled ``nn.Module`` comes back as a `Record` whose attributes are the module's ``__dict__``:
``_modules``, ``_parameters`` and ``_buffers`` (ordered dicts of children, arrays and None) and plain
attributes (``f``, ``i``, ``type``, ``eps``, ``kernel_size``…). `type_name`, `children`, `parameter`,
`attr` and `walk` read such a tree; `new_record` builds one by hand (for tests).

`CheckpointError`, the error of reading a checkpoint, lives here because `parameter` raises it too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from streamer.errors import ModelError

__all__ = [
    "CheckpointError",
    "Record",
    "attr",
    "children",
    "is_record",
    "new_record",
    "parameter",
    "record_class",
    "type_name",
    "walk",
]


class CheckpointError(ModelError):
    """A checkpoint cannot be read safely: not a PyTorch zip checkpoint, corrupt, or it names a
    dangerous global (a sign of a malicious file — do not load it with ``torch.load`` either)."""


class Record:
    """An inert stand-in for an object of a class the checkpoint names (e.g. ``models.common.Conv``).

    One subclass per global name; its `global_name` is the dotted name from the file. An instance keeps
    what unpickling gave it and nothing else: the constructor arguments (`record_args`), the
    ``__setstate__`` state (a dict state becomes the instance's attributes; any other state is kept in
    `record_state`), and items or list elements pickle added (`record_items`, `record_list`). The
    bookkeeping lives in slots, so attributes from the file cannot overwrite it.
    """

    __slots__ = ("__dict__", "record_args", "record_items", "record_list", "record_state")
    global_name: ClassVar[str] = "?"
    record_args: tuple[tuple[Any, ...], dict[str, Any]]
    record_state: Any
    record_items: dict[Any, Any]
    record_list: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> Record:
        self = object.__new__(cls)
        self.record_args = (args, kwargs)
        self.record_state = None
        self.record_items = {}
        self.record_list = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE calls cls(*args): nothing to do
        pass

    def __setstate__(self, state: Any) -> None:
        if (
            isinstance(state, tuple)
            and len(state) == 2
            and all(s is None or isinstance(s, dict) for s in state)
        ):
            for part in state:  # (dict state, slot state): both become plain attributes
                if part:
                    self.__dict__.update(part)
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.record_state = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S) on a dict-like class
        self.record_items[key] = value

    def append(self, value: Any) -> None:  # APPEND(S) on a list-like class
        self.record_list.append(value)

    def extend(self, values: Any) -> None:
        self.record_list.extend(values)

    def __repr__(self) -> str:
        return f"<Record {self.global_name}>"


_RECORD_CLASSES: dict[str, type[Record]] = {}


def record_class(global_name: str) -> type[Record]:
    """The `Record` subclass standing for `global_name` (one class per name, created on first use)."""
    cls = _RECORD_CLASSES.get(global_name)
    if cls is None:
        module, _, short = global_name.rpartition(".")
        namespace = {"__slots__": (), "global_name": global_name, "__qualname__": short, "__module__": module}
        cls = type(short, (Record,), namespace)
        _RECORD_CLASSES[global_name] = cls
    return cls


def new_record(global_name: str, **attrs: Any) -> Record:
    """A `Record` of `global_name` with attributes `attrs`, as unpickling would build it (for tests)."""
    rec = record_class(global_name)()
    rec.__setstate__(attrs)
    return rec


def is_record(obj: object, name: str | None = None) -> bool:
    """True when `obj` is a `Record` (of global `name`, when given)."""
    return isinstance(obj, Record) and (name is None or type(obj).global_name == name)


def type_name(obj: object) -> str:
    """The global name of a `Record` (``"models.common.Conv"``), else the Python type's name."""
    if isinstance(obj, Record):
        return type(obj).global_name
    return type(obj).__name__


def attr(obj: object, name: str, default: Any = None) -> Any:
    """Attribute `name` of a record (what the module had in its ``__dict__``), or `default`."""
    if isinstance(obj, Record):
        return obj.__dict__.get(name, default)
    return default


def children(obj: object) -> dict[str, Any]:
    """A module record's ``_modules`` (name → child record or None), in definition order."""
    mods = attr(obj, "_modules")
    return dict(mods) if isinstance(mods, dict) else {}


def parameter(obj: object, name: str) -> np.ndarray | None:
    """Parameter or buffer `name` of a module record (``_parameters``, then ``_buffers``), or None."""
    for table in ("_parameters", "_buffers"):
        values = attr(obj, table)
        if isinstance(values, dict) and values.get(name) is not None:
            value = values[name]
            if not isinstance(value, np.ndarray):
                raise CheckpointError(f"{type_name(obj)}.{name} is {type_name(value)}, not a tensor")
            return value
    return None


def walk(obj: object, prefix: str = "") -> Iterator[tuple[str, Record]]:
    """Every module record under `obj` (itself first), depth first, with its dotted path."""
    if isinstance(obj, Record):
        yield prefix, obj
        for name, child in children(obj).items():
            yield from walk(child, f"{prefix}.{name}" if prefix else name)
