"""Read PyTorch checkpoints without PyTorch, and without running code from the file.

A ``.pt`` file written by ``torch.save`` (PyTorch >= 1.6) is a zip archive::

    <archive>/data.pkl        the pickled object tree (protocol 2 in practice)
    <archive>/data/<key>      one raw storage per key, the bytes of its elements
    <archive>/byteorder       "little" or "big" (absent in files from before PyTorch 1.10: little)
    <archive>/version         the format version

``torch.load`` unpickles ``data.pkl`` with the full power of `pickle`: any importable callable named in
the file is called with arguments from the file, which is arbitrary code execution. Here a restricted
`pickle.Unpickler` decides what every global named in the file becomes (`_Unpickler.find_class`):

- **allowed reconstruction functions** — ``torch._utils._rebuild_tensor_v2``, ``_rebuild_parameter``,
  ``collections.OrderedDict``, the storage types, ``torch.Size``, dtypes … — are replaced by stand-ins
  written here in plain Python and NumPy: a tensor comes back as a contiguous `numpy.ndarray`;
- **dangerous globals** — ``builtins.eval``/``exec``/``getattr``…, anything from ``os``, ``posix``,
  ``subprocess``, ``sys``, ``importlib``, ``pickle``, ``ctypes``, ``operator``, ``functools``… — are
  refused with a `CheckpointError` naming the global, when the unpickler meets it, before it could be
  called. One narrow form of ``getattr`` is allowed (see `_safe_getattr`);
- **every other global** (``models.yolo.Model``, ``torch.nn.modules.conv.Conv2d``, ``numpy.dtype``…)
  becomes an inert `Record` class: instantiating it stores its arguments, ``__setstate__`` stores the
  state. Nothing is imported and no code from the file, or from the module it names, ever runs.

A pickled ``nn.Module`` comes back as a `Record` whose attributes are the module's ``__dict__``; the
records, the accessors that walk them (`type_name`, `children`, `parameter`, `attr`, `walk`) and
`CheckpointError` are in the sibling `streamer.models.records`. This module holds the tensors' stand-ins,
the allow-list and the deny-list, the unpickler and the archive.

Not supported, refused with a clear `CheckpointError`: the legacy (pre-1.6, non-zip) format and
TorchScript archives.
"""

from __future__ import annotations

import _compat_pickle
import io
import logging
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from streamer.models.records import CheckpointError, Record, record_class, type_name

__all__ = ["load_checkpoint"]

log = logging.getLogger(__name__)


# --- tensors --------------------------------------------------------------------------------------------


class _StorageType:
    """Stand-in for ``torch.<X>Storage``: only its element type matters."""

    def __init__(self, name: str, dtype: str) -> None:
        self.name = name
        self.dtype = dtype

    def __repr__(self) -> str:
        return f"<storage type torch.{self.name}>"


# storage type name -> NumPy dtype ("bfloat16": read as uint16, widened to float32)
_STORAGE_DTYPES = {
    "HalfStorage": "float16",
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
    "UntypedStorage": "uint8",
}

# torch.<dtype> globals (pickled torch.dtype objects) -> NumPy dtype name
_TORCH_DTYPES = {
    "float16": "float16",
    "half": "float16",
    "float32": "float32",
    "float": "float32",
    "float64": "float64",
    "double": "float64",
    "bfloat16": "float32",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "short": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}


_MAX_EXPANDED = 1 << 26  # elements a broadcast (stride-0) tensor may expand to
_MAX_RATIO = 64  # largest compression ratio accepted for a storage (torch writes them uncompressed)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> np.ndarray:
    """A tensor view of `storage` (size, stride and offset in elements) copied to a contiguous array."""
    if not isinstance(storage, np.ndarray) or storage.ndim != 1:
        raise CheckpointError(f"tensor storage is {type_name(storage)}, expected a storage from the archive")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)):
        raise CheckpointError(f"bad tensor geometry: size {size!r}, stride {stride!r}")
    values = (storage_offset, *size, *stride)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        raise CheckpointError(f"bad tensor geometry: offset {storage_offset!r}, size {size}, stride {stride}")
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    numel = int(np.prod(size, dtype=object))
    if numel > max(storage.shape[0], _MAX_EXPANDED):  # stride 0 could make a tiny file fill the memory
        raise CheckpointError(f"tensor of size {size} expands a storage of {storage.shape[0]} elements")
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.shape[0]:
        raise CheckpointError(
            f"tensor of size {size}, stride {stride}, offset {storage_offset} reaches element {last} "
            f"of a storage of {storage.shape[0]}"
        )
    item = storage.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view, order="C", copy=True)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    return data


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> Any:
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    # torch._tensor._rebuild_from_type_v2: a tensor subclass. `func` is itself something this unpickler
    # produced (a stand-in or a Record class), so calling it is safe; the subclass and state are dropped.
    inert = isinstance(func, type) and issubclass(func, Record)
    if not isinstance(args, tuple) or not (func in _TENSOR_FUNCS or inert):
        raise CheckpointError("torch._tensor._rebuild_from_type_v2 with an unexpected rebuild function")
    return func(*args)


def _size(*args: Any) -> tuple[Any, ...]:
    return tuple(*args)


def _device(*args: Any) -> str:
    return ":".join(str(a) for a in args)


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # protocol 2 pickles `bytes` as _codecs.encode(str, "latin1")
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointError("_codecs.encode is only allowed as protocol 2's encoding of bytes")
    return text.encode("latin1")


_TENSOR_FUNCS: set[Any] = {_rebuild_tensor_v2, _rebuild_parameter, _rebuild_parameter_with_state}


# --- the allow-list and the deny-list -------------------------------------------------------------------

_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): _size,
    ("torch", "device"): _device,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "complex"): complex,
    ("_codecs", "encode"): _codecs_encode,
}
_ALLOWED.update({("torch", n): _StorageType(n, d) for n, d in _STORAGE_DTYPES.items()})
_ALLOWED.update({("torch", n): np.dtype(d) for n, d in _TORCH_DTYPES.items()})

# Modules whose globals can run code, touch files, processes or the network, or reach other globals.
_DENIED_MODULES = (
    "builtins", "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "shutil", "socket",
    "importlib", "pickle", "_pickle", "pickletools", "marshal", "types", "runpy", "code", "codeop", "pty",
    "ctypes", "multiprocessing", "io", "_io", "operator", "_operator", "functools", "webbrowser",
    "asyncio", "urllib", "http", "pathlib", "tempfile", "signal", "threading", "_thread", "copyreg",
    "inspect", "pdb", "bdb", "timeit", "trace", "profile", "cProfile", "shelve", "dbm", "sqlite3",
    "torch.hub", "torch.jit", "torch.package", "torch.serialization", "torch.load",
    "numpy.load", "numpy.lib.npyio", "numpy.testing", "numpy.f2py", "numpy.distutils",
)  # fmt: skip
# Names that are dangerous whatever module they come from.
_DENIED_NAMES = frozenset({
    "eval", "exec", "execfile", "compile", "__import__", "system", "popen", "Popen", "spawn", "spawnv",
    "spawnve", "spawnl", "execv", "execve", "execl", "fork", "getattr", "setattr", "delattr", "globals",
    "locals", "vars", "open", "apply", "input", "breakpoint", "__builtins__", "load", "loads",
})  # fmt: skip


def _normalise(module: str, name: str) -> tuple[str, str]:
    """Python 2 names (``__builtin__``, ``copy_reg``…) as Python 3 knows them, as `pickle` maps them."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _denied(module: str, name: str) -> bool:
    if any(module == m or module.startswith(m + ".") for m in _DENIED_MODULES):
        return True
    return any(part in _DENIED_NAMES for part in name.split("."))


# --- the unpickler --------------------------------------------------------------------------------------


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, storage: Callable[[Any], np.ndarray]) -> None:
        super().__init__(io.BytesIO(data), fix_imports=False, encoding="latin1")
        self._storage = storage

    def find_class(self, module: str, name: str) -> Any:
        module, name = _normalise(module, name)
        full = f"{module}.{name}"
        if (module, name) == ("builtins", "getattr"):
            return _safe_getattr
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if _denied(module, name):
            raise CheckpointError(
                f"checkpoint refused: it names the global {full!r}, which can run code. This file is "
                "malicious or not a model checkpoint; do not open it with torch.load either"
            )
        return record_class(full)

    def persistent_load(self, pid: Any) -> Any:
        return self._storage(pid)


def _safe_getattr(obj: Any, name: Any, *default: Any) -> type[Record]:
    """``builtins.getattr`` restricted to a `Record` class and an attribute name.

    Checkpoints use it for unbound methods (yolov7's ``ISegment.detect = IDetect.forward`` pickles as
    ``getattr(models.yolo.IDetect, "forward")``). The result is another inert `Record` class named
    ``models.yolo.IDetect.forward``; getattr on anything else is refused.
    """
    if isinstance(obj, type) and issubclass(obj, Record) and isinstance(name, str) and not default:
        full = f"{obj.global_name}.{name}"
        if _denied(*full.rsplit(".", 1)):
            raise CheckpointError(f"checkpoint refused: it reaches for {full!r} through getattr")
        return record_class(full)
    raise CheckpointError(
        f"checkpoint refused: it calls the global 'builtins.getattr' on {type_name(obj)}; only "
        "getattr(<class named in the file>, <name>) is allowed"
    )


# --- the archive ----------------------------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a pre-1.6 torch.save file


def load_checkpoint(path: str | Path) -> Any:
    """Read the PyTorch checkpoint at `path` into an inert tree of dicts, lists, arrays and `Record`s.

    Tensors become contiguous `numpy.ndarray` of the storage's dtype (bfloat16 is widened to float32),
    with size, stride and storage offset honoured; tensors sharing a storage get separate copies.

    Raises `CheckpointError` for a file that is not a zip checkpoint (legacy format, TorchScript,
    anything else), a corrupt one, or one that names a dangerous global.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except zipfile.BadZipFile:
        raise CheckpointError(_not_zip_message(path)) from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    with archive:
        return _load_archive(path, archive)


def _not_zip_message(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(64)
    if head.startswith(b"\x80") and _is_legacy(head):
        return (
            f"{path} is a PyTorch checkpoint in the legacy format (torch.save before PyTorch 1.6), which "
            "is not supported: re-save it with a recent PyTorch (torch.save(torch.load(f), f2)) in a "
            "sandbox you trust"
        )
    if head.startswith(b"\x80"):
        return f"{path} is a plain pickle, not a PyTorch zip checkpoint; refused (pickles can run code)"
    return f"{path} is not a PyTorch checkpoint (not a zip archive)"


def _is_legacy(head: bytes) -> bool:
    # protocol 2 pickle of a LONG1: \x80 \x02 \x8a <n> <little-endian bytes>
    if len(head) < 4 or head[2] != 0x8A:
        return False
    n = head[3]
    return int.from_bytes(head[4 : 4 + n], "little", signed=True) == _LEGACY_MAGIC


def _load_archive(path: Path, archive: zipfile.ZipFile) -> Any:
    names = archive.namelist()
    pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkls) != 1:
        if any(n.endswith("/constants.pkl") for n in names):
            raise CheckpointError(f"{path} is a TorchScript archive (torch.jit.save), not a checkpoint")
        raise CheckpointError(f"{path} is a zip file but not a PyTorch checkpoint (no <archive>/data.pkl)")
    prefix = pkls[0][: -len("data.pkl")]
    order = "little"
    if prefix + "byteorder" in names:
        order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
        if order not in ("little", "big"):
            raise CheckpointError(f"{path}: unknown byteorder {order!r}")
    storages: dict[str, np.ndarray] = {}

    def storage(pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{path}: unexpected persistent id {pid!r:.80}")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, _StorageType):
            raise CheckpointError(f"{path}: storage {key!r} has type {type_name(stype)}, not a storage type")
        if not isinstance(key, str) or not isinstance(numel, int):
            raise CheckpointError(f"{path}: bad storage reference {pid!r:.80}")
        if key not in storages:
            storages[key] = _read_storage(archive, f"{prefix}data/{key}", stype, numel, order)
        elif storages[key].shape[0] != numel:
            raise CheckpointError(f"{path}: storage {key!r} referenced with two sizes")
        return storages[key]

    try:
        data = archive.read(pkls[0])
        tree = _Unpickler(data, storage).load()
        log.debug("read %s: %d storages, %d bytes of pickle", path, len(storages), len(data))
        return tree
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError,
            IndexError, zipfile.BadZipFile, OSError) as exc:  # fmt: skip
        raise CheckpointError(f"{path}: corrupt or unsupported checkpoint: {exc}") from exc


def _read_storage(
    archive: zipfile.ZipFile, member: str, stype: _StorageType, numel: int, order: str
) -> np.ndarray:
    kind = "uint16" if stype.dtype == "bfloat16" else stype.dtype
    dtype = np.dtype(kind).newbyteorder("<" if order == "little" else ">")
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise CheckpointError(f"checkpoint storage {member} is missing") from None
    if info.compress_type != zipfile.ZIP_STORED and info.file_size > _MAX_RATIO * max(info.compress_size, 1):
        raise CheckpointError(f"checkpoint storage {member} is compressed more than {_MAX_RATIO}:1; refused")
    if numel < 0 or info.file_size != numel * dtype.itemsize:
        raise CheckpointError(
            f"checkpoint storage {member} holds {info.file_size} bytes, expected {numel} x {dtype.itemsize}"
        )
    raw = np.frombuffer(archive.read(member), dtype=dtype)
    if stype.dtype == "bfloat16":  # bfloat16 is the top half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(dtype.newbyteorder("="), copy=False)
