"""`streamer.models.checkpoint`: tensors from hand-built torch zips, malicious pickles refused, the real file.

The checkpoints here are written by hand in the format ``torch.save`` uses (a zip of ``data.pkl`` and raw
storages); the pickles are assembled opcode by opcode, so the tests need neither torch nor fake modules.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from streamer.errors import ModelError
from streamer.models.checkpoint import load_checkpoint
from streamer.models.records import (
    CheckpointError,
    attr,
    children,
    is_record,
    parameter,
    type_name,
    walk,
)
from tests.support.paths import shared_model

# --- a protocol-2 pickle written opcode by opcode -------------------------------------------------------


def G(module: str, name: str) -> bytes:  # GLOBAL
    return b"c" + f"{module}\n{name}\n".encode()


def I(v: int) -> bytes:  # BININT  # noqa: E743
    return b"J" + struct.pack("<i", v)


def F(v: float) -> bytes:  # BINFLOAT
    return b"G" + struct.pack(">d", v)


def S(s: str) -> bytes:  # BINUNICODE
    e = s.encode()
    return b"X" + struct.pack("<I", len(e)) + e


def T(*items: bytes) -> bytes:  # MARK ... TUPLE
    return b"(" + b"".join(items) + b"t"


def L(*items: bytes) -> bytes:  # EMPTY_LIST MARK ... APPENDS
    return b"](" + b"".join(items) + b"e"


def D(*pairs: tuple[bytes, bytes]) -> bytes:  # EMPTY_DICT MARK ... SETITEMS
    return b"}(" + b"".join(k + v for k, v in pairs) + b"u"


def CALL(fn: bytes, *args: bytes) -> bytes:  # REDUCE
    return fn + T(*args) + b"R"


def NEWOBJ(cls: bytes, state: bytes) -> bytes:  # cls.__new__(cls) then BUILD(state)
    return cls + b")\x81" + state + b"b"


FALSE, TRUE, NONE = b"\x89", b"\x88", b"N"


def pickled(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def odict(*pairs: tuple[bytes, bytes]) -> bytes:
    out = CALL(G("collections", "OrderedDict"))
    for k, v in pairs:
        out += k + v + b"s"  # SETITEM
    return out


def tensor(
    stype: str, key: str, numel: int, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> bytes:
    storage = T(S("storage"), G("torch", stype), S(key), S("cpu"), I(numel)) + b"Q"  # BINPERSID
    return CALL(
        G("torch._utils", "_rebuild_tensor_v2"),
        storage, I(offset), T(*map(I, size)), T(*map(I, stride)), FALSE, odict(),
    )  # fmt: skip


def parameter_of(t: bytes) -> bytes:
    return CALL(G("torch._utils", "_rebuild_parameter"), t, TRUE, odict())


def write_ckpt(
    path: Path, pkl: bytes, storages: dict[str, bytes] | None = None, *, byteorder: str | None = "little",
    prefix: str = "archive",
) -> Path:  # fmt: skip
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pkl)
        if byteorder is not None:
            z.writestr(f"{prefix}/byteorder", byteorder)
        for key, raw in (storages or {}).items():
            z.writestr(f"{prefix}/data/{key}", raw)
        z.writestr(f"{prefix}/version", "3\n")
    return path


# --- tensors --------------------------------------------------------------------------------------------


def test_tensors_with_strides_offsets_and_dtypes(tmp_path: Path) -> None:
    f32 = np.arange(24, dtype=np.float32) * 0.5
    f16 = (np.arange(10, dtype=np.float16) - 3) / 4
    i64 = np.array([7, -1, 1 << 40], dtype=np.int64)
    b = np.array([True, False, True, True])
    bf16_values = np.array([1.5, -2.0, 3.140625], dtype=np.float32)  # exact in bfloat16
    bf16 = (bf16_values.view(np.uint32) >> 16).astype("<u2")
    pkl = pickled(D(
        (S("transposed"), tensor("FloatStorage", "0", 24, 2, (3, 4), (1, 3))),  # non-contiguous, offset
        (S("contiguous"), tensor("FloatStorage", "0", 24, 0, (2, 3, 4), (12, 4, 1))),  # shares storage 0
        (S("half"), parameter_of(tensor("HalfStorage", "1", 10, 1, (2, 2), (4, 1)))),
        (S("broadcast"), tensor("HalfStorage", "1", 10, 5, (3, 2), (0, 1))),  # stride 0
        (S("scalar"), tensor("LongStorage", "2", 3, 2, (), ())),
        (S("bool"), tensor("BoolStorage", "3", 4, 0, (4,), (1,))),
        (S("bf16"), tensor("BFloat16Storage", "4", 3, 0, (3,), (1,))),
        (S("empty"), tensor("FloatStorage", "0", 24, 0, (0, 5), (5, 1))),
        (S("size"), CALL(G("torch", "Size"), T(I(1), I(2)))),
    ))  # fmt: skip
    storages = {
        "0": f32.tobytes(),
        "1": f16.tobytes(),
        "2": i64.tobytes(),
        "3": b.tobytes(),
        "4": bf16.tobytes(),
    }
    out = load_checkpoint(write_ckpt(tmp_path / "t.pt", pkl, storages))

    expected = np.lib.stride_tricks.as_strided(f32[2:], (3, 4), (4, 12))
    assert out["transposed"].dtype == np.float32 and out["transposed"].flags.c_contiguous
    np.testing.assert_array_equal(out["transposed"], expected)
    np.testing.assert_array_equal(out["contiguous"], f32.reshape(2, 3, 4))
    assert out["half"].dtype == np.float16
    np.testing.assert_array_equal(out["half"], np.array([[f16[1], f16[2]], [f16[5], f16[6]]]))
    np.testing.assert_array_equal(out["broadcast"], np.tile(f16[5:7], (3, 1)))
    assert out["scalar"].shape == () and out["scalar"].dtype == np.int64 and int(out["scalar"]) == 1 << 40
    np.testing.assert_array_equal(out["bool"], b)
    np.testing.assert_array_equal(out["bf16"], bf16_values)
    assert out["empty"].shape == (0, 5)
    assert out["size"] == (1, 2)
    # every tensor is its own writable copy, not a view of the archive bytes or of another tensor
    out["transposed"][0, 0] = -1
    assert out["contiguous"][0, 0, 2] == f32[2]


def test_big_endian_archive(tmp_path: Path) -> None:
    values = np.array([1.0, -2.5, 3.25], dtype=np.float32)
    pkl = pickled(tensor("FloatStorage", "0", 3, 0, (3,), (1,)))
    out = load_checkpoint(
        write_ckpt(tmp_path / "be.pt", pkl, {"0": values.astype(">f4").tobytes()}, byteorder="big")
    )
    np.testing.assert_array_equal(out, values)
    assert out.dtype == np.float32


def test_archive_without_byteorder_and_other_prefix_is_little_endian(tmp_path: Path) -> None:
    values = np.array([1, 2, 3], dtype=np.int64)
    pkl = pickled(tensor("LongStorage", "7", 3, 0, (3,), (1,)))
    path = write_ckpt(tmp_path / "old.pt", pkl, {"7": values.tobytes()}, byteorder=None, prefix="yolov7")
    np.testing.assert_array_equal(load_checkpoint(path), values)


@pytest.mark.parametrize(
    ("tensor_pickle", "storages", "message"),
    [
        (tensor("FloatStorage", "0", 4, 2, (3,), (1,)), {"0": bytes(16)}, "reaches element 4"),
        (tensor("FloatStorage", "0", 4, 0, (2,), (1,)), {"0": bytes(12)}, "holds 12 bytes"),
        (tensor("FloatStorage", "9", 4, 0, (2,), (1,)), {"0": bytes(16)}, "missing"),
        (tensor("FloatStorage", "0", 4, 0, (2,), (-1,)), {"0": bytes(16)}, "bad tensor geometry"),
        (tensor("FloatStorage", "0", 1, 0, (1 << 14, 1 << 14), (0, 0)), {"0": bytes(4)}, "expands a storage"),
    ],
    ids=["out-of-bounds", "short-storage", "missing-storage", "negative-stride", "stride-0-bomb"],
)
def test_corrupt_tensors_are_clear_errors(
    tmp_path: Path, tensor_pickle: bytes, storages: dict, message: str
) -> None:
    path = write_ckpt(tmp_path / "bad.pt", pickled(tensor_pickle), storages)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_compressed_storage_bomb_is_refused(tmp_path: Path) -> None:
    numel = 1 << 20  # 4 MB of zeros deflate to ~4 kB; torch never compresses storages
    path = write_ckpt(tmp_path / "bomb.pt", pickled(tensor("FloatStorage", "0", numel, 0, (numel,), (1,))))
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data/0", bytes(4 * numel))
    with pytest.raises(CheckpointError, match="compressed more than"):
        load_checkpoint(path)


# --- inert records --------------------------------------------------------------------------------------


def _module(cls: bytes, modules: dict[str, bytes] | None = None, params: dict[str, bytes] | None = None,
            **attrs: bytes) -> bytes:  # fmt: skip
    """A pickled nn.Module as torch writes it: NEWOBJ, then BUILD with its __dict__."""
    return NEWOBJ(cls, D(
        (S("training"), FALSE),
        (S("_parameters"), odict(*[(S(k), v) for k, v in (params or {}).items()])),
        (S("_buffers"), odict()),
        (S("_modules"), odict(*[(S(k), v) for k, v in (modules or {}).items()])),
        *[(S(k), v) for k, v in attrs.items()],
    ))  # fmt: skip


def test_unknown_globals_become_inert_records(tmp_path: Path) -> None:
    assert "this" not in sys.modules  # importing `this` prints the Zen of Python: a visible side effect
    weight = np.arange(6, dtype=np.float16).reshape(2, 3, 1, 1)
    conv = _module(
        G("torch.nn.modules.conv", "Conv2d"),
        params={"weight": parameter_of(tensor("HalfStorage", "0", 6, 0, (2, 3, 1, 1), (3, 1, 1, 1))),
                "bias": NONE},
        kernel_size=T(I(1), I(1)), stride=T(I(1), I(1)), groups=I(1),
    )  # fmt: skip
    layer = _module(
        G("models.common", "Conv"), {"conv": conv, "act": _module(G("torch.nn.modules.activation", "SiLU"))},
        f=I(-1), i=I(0), type=S("models.common.Conv"),
    )  # fmt: skip
    pkl = pickled(D(
        (S("model"), layer),
        (S("zen"), CALL(G("this", "s"), S("argument"))),  # an unknown global called with arguments
        (S("numpy"), CALL(G("numpy.core.multiarray", "_reconstruct"), G("numpy", "ndarray"), T(), S("b"))),
        (S("unbound"), CALL(G("__builtin__", "getattr"), G("models.yolo", "IDetect"), S("forward"))),
        (S("set"), CALL(G("__builtin__", "set"), L(I(1), I(2)))),
        (S("eps"), F(1e-3)),
    ))  # fmt: skip
    out = load_checkpoint(write_ckpt(tmp_path / "m.pt", pkl, {"0": weight.tobytes()}))

    assert "this" not in sys.modules and "models" not in sys.modules
    model = out["model"]
    assert is_record(model, "models.common.Conv") and type_name(model) == "models.common.Conv"
    assert (attr(model, "f"), attr(model, "i"), attr(model, "type")) == (-1, 0, "models.common.Conv")
    assert attr(model, "missing", "default") == "default"
    conv = children(model)["conv"]
    assert type_name(conv) == "torch.nn.modules.conv.Conv2d" and attr(conv, "kernel_size") == (1, 1)
    np.testing.assert_array_equal(parameter(conv, "weight"), weight)
    assert parameter(conv, "bias") is None
    assert [(p, type_name(r)) for p, r in walk(model)] == [
        ("", "models.common.Conv"),
        ("conv", "torch.nn.modules.conv.Conv2d"),
        ("act", "torch.nn.modules.activation.SiLU"),
    ]
    zen = out["zen"]
    assert type_name(zen) == "this.s" and zen.record_args == (("argument",), {})
    assert type_name(out["numpy"]) == "numpy.core.multiarray._reconstruct"
    assert out["unbound"].global_name == "models.yolo.IDetect.forward"  # a class, never called
    assert out["set"] == {1, 2} and out["eps"] == 1e-3


# --- malicious checkpoints ------------------------------------------------------------------------------


class _Evil:
    """Pickles as ``func(*args)``: what a malicious checkpoint's ``__reduce__`` does."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _marker_command(marker: Path) -> str:
    return f"touch {marker}"


def _py_marker(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')"


@pytest.mark.parametrize(
    ("payload", "global_name"),
    [
        (lambda m: pickle.dumps({"model": _Evil(os.system, _marker_command(m))}, protocol=2), "posix.system"),
        (lambda m: pickled(CALL(G("os", "system"), S(_marker_command(m)))), "os.system"),
        (lambda m: pickle.dumps(_Evil(eval, _py_marker(m)), protocol=2), "builtins.eval"),
        (lambda m: pickle.dumps(_Evil(exec, _py_marker(m)), protocol=4), "builtins.exec"),
        (lambda m: pickled(CALL(G("__builtin__", "eval"), S(_py_marker(m)))), "builtins.eval"),
        (lambda m: pickled(CALL(G("subprocess", "call"), T(S("touch"), S(str(m))))), "subprocess.call"),
        (lambda m: pickled(CALL(G("__builtin__", "__import__"), S("os"))), "builtins.__import__"),
        (lambda m: pickled(CALL(G("builtins", "open"), S(str(m)), S("w"))), "builtins.open"),
        (lambda m: pickled(CALL(G("nt", "system"), S("calc"))), "nt.system"),
        (lambda m: pickled(CALL(G("functools", "partial"), G("builtins", "set"))), "functools.partial"),
    ],
    ids=["posix.system", "os.system", "eval", "exec-proto4", "__builtin__.eval", "subprocess", "__import__",
         "open", "nt.system", "functools.partial"],
)  # fmt: skip
def test_malicious_checkpoint_is_refused(tmp_path: Path, payload, global_name: str) -> None:
    marker = tmp_path / "pwned"
    path = write_ckpt(tmp_path / "evil.pt", payload(marker))
    with pytest.raises(CheckpointError, match=re.escape(f"names the global '{global_name}'")) as info:
        load_checkpoint(path)
    assert isinstance(info.value, ModelError)
    assert "malicious" in str(info.value)
    assert not marker.exists()


def test_getattr_only_reaches_names_of_inert_classes(tmp_path: Path) -> None:
    # getattr(OrderedDict, "__init__"), or any getattr on a real object, could walk to real code
    pkl = pickled(CALL(G("builtins", "getattr"), G("collections", "OrderedDict"), S("fromkeys")))
    with pytest.raises(CheckpointError, match=r"'builtins\.getattr' on"):
        load_checkpoint(write_ckpt(tmp_path / "a.pt", pkl))
    pkl = pickled(CALL(G("builtins", "getattr"), G("models.yolo", "Model"), S("__import__")))
    with pytest.raises(CheckpointError, match=r"reaches for 'models\.yolo\.Model\.__import__'"):
        load_checkpoint(write_ckpt(tmp_path / "b.pt", pkl))


def test_storage_must_come_from_a_storage_type(tmp_path: Path) -> None:
    pid = T(S("storage"), G("models.yolo", "Model"), S("0"), S("cpu"), I(1)) + b"Q"
    with pytest.raises(CheckpointError, match="not a storage type"):
        load_checkpoint(write_ckpt(tmp_path / "s.pt", pickled(pid), {"0": bytes(4)}))


def test_plain_pickle_is_refused_without_unpickling(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps({"model": _Evil(os.system, _marker_command(marker))}, protocol=2))
    with pytest.raises(CheckpointError, match="plain pickle"):
        load_checkpoint(path)
    assert not marker.exists()


def test_legacy_format_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    magic = 0x1950A86A20F9469CFC6C
    path.write_bytes(pickle.dumps(magic, protocol=2) + pickle.dumps(1001, protocol=2))
    with pytest.raises(CheckpointError, match="legacy format"):
        load_checkpoint(path)


def test_other_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    with zipfile.ZipFile(tmp_path / "script.pt", "w") as z:
        z.writestr("m/constants.pkl", b"")
        z.writestr("m/code/__torch__.py", b"")
    with pytest.raises(CheckpointError, match="TorchScript"):
        load_checkpoint(tmp_path / "script.pt")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", b"hi")
    with pytest.raises(CheckpointError, match=r"no <archive>/data\.pkl"):
        load_checkpoint(tmp_path / "other.zip")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(write_ckpt(tmp_path / "trunc.pt", pickled(T(I(1)))[:-3]))


# --- the real checkpoint --------------------------------------------------------------------------------


def test_real_yolov7_checkpoint() -> None:
    ckpt = load_checkpoint(shared_model("yolov7-seg.pt"))
    model = ckpt["model"]
    assert type_name(model) == "models.yolo.SegmentationModel"
    layers = list(children(children(model)["model"]).values())
    assert len(layers) == 106
    assert [attr(layer, "i") for layer in layers] == list(range(106))
    assert type_name(layers[-1]) == "models.yolo.ISegment" and attr(layers[-1], "f") == [102, 103, 104]
    assert {type_name(layer) for layer in layers} == {
        "models.common.Conv", "models.common.Concat", "models.common.MP", "models.common.SPPCSPC",
        "torch.nn.modules.upsampling.Upsample", "models.yolo.ISegment",
    }  # fmt: skip
    bns = [r for _, r in walk(model) if type_name(r).endswith("BatchNorm2d")]
    assert bns and {attr(bn, "eps") for bn in bns} == {1e-3}
    weight = parameter(children(layers[0])["conv"], "weight")
    assert weight.dtype == np.float16 and weight.shape == (32, 3, 3, 3)
    assert attr(model, "yaml")["nc"] == 80
    assert isinstance(ckpt["model"].names, dict)  # attributes are plain Python values
