"""`streamer.models.yolov7_onnx`: a synthetic model against a NumPy forward, the real checkpoint against
the PyTorch-exported reference ONNX.

The synthetic model covers what ``yolov7-seg.pt`` does not contain (RepConv, ReOrg, SP, DownC,
Shortcut, grouped convs, an already-fused conv, LeakyReLU, the Detect/IDetect/IAuxDetect heads); its
reference is a float64 NumPy transliteration of the yolov7 ``forward`` methods, unfused.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import numpy_helper

from streamer.errors import ModelError
from streamer.models import yolov7_onnx
from streamer.models.records import new_record, record_class, walk
from streamer.models.yolov7_onnx import build_model, import_checkpoint
from streamer.postprocess.nms import NmsParams, box_iou, detect_image
from streamer.preprocess import letterbox, to_input_tensor
from tests.support.paths import shared_model, tinycoco_images

F64 = np.float64
Fn = Callable[[np.ndarray], np.ndarray]

# --- NumPy reference ops --------------------------------------------------------------------------------


def np_conv(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: int, pad: int, groups: int
) -> np.ndarray:
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    cin, cout = w.shape[1], w.shape[0] // groups
    y = np.concatenate(
        [
            np.einsum("bchwij,ocij->bohw", win[:, g * cin : (g + 1) * cin], w[g * cout : (g + 1) * cout])
            for g in range(groups)
        ],
        axis=1,
    )
    return y if b is None else y + b[None, :, None, None]


def np_maxpool(x: np.ndarray, k: int, s: int, p: int) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=-np.inf)
    return sliding_window_view(xp, (k, k), axis=(2, 3))[:, :, ::s, ::s].max(axis=(4, 5))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


# --- record builders, each with its NumPy forward -------------------------------------------------------

rng = np.random.default_rng(7)


def t16(*shape: int, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """A float16 tensor, as in the real fp16 checkpoints; references compute on its exact values."""
    return (rng.standard_normal(shape) * scale + offset).astype(np.float16)


def rec(
    name: str, modules: dict | None = None, params: dict | None = None, buffers: dict | None = None, **attrs
):
    return new_record(
        name, training=False, _modules=OrderedDict(modules or {}), _parameters=OrderedDict(params or {}),
        _buffers=OrderedDict(buffers or {}), **attrs,
    )  # fmt: skip


def conv2d(c1: int, c2: int, k: int, s: int = 1, g: int = 1, bias: bool = False, p: int | None = None):
    p = k // 2 if p is None else p
    w = t16(c2, c1 // g, k, k, scale=1 / np.sqrt(c1 // g * k * k))
    b = t16(c2, scale=0.1) if bias else None
    r = rec(
        "torch.nn.modules.conv.Conv2d", params={"weight": w, "bias": b}, in_channels=c1, out_channels=c2,
        kernel_size=(k, k), stride=(s, s), padding=(p, p), dilation=(1, 1), groups=g, padding_mode="zeros",
    )  # fmt: skip
    return r, lambda x: np_conv(x, w.astype(F64), None if b is None else b.astype(F64), s, p, g)


def batchnorm(c: int, eps: float = 1e-3):
    # small running variances: with them, eps 1e-3 (yolov7) and 1e-5 (PyTorch's default) differ by ~20 %
    gamma, beta, mean = t16(c, scale=0.02, offset=0.1), t16(c, scale=0.1), t16(c, scale=0.1)
    var = rng.uniform(0.002, 0.02, c).astype(np.float16)
    r = rec(
        "torch.nn.modules.batchnorm.BatchNorm2d", params={"weight": gamma, "bias": beta},
        buffers={"running_mean": mean, "running_var": var, "num_batches_tracked": np.array(0)},
        num_features=c, eps=eps, momentum=0.03, affine=True, track_running_stats=True,
    )  # fmt: skip

    def fn(x: np.ndarray) -> np.ndarray:
        v = [a.astype(F64)[None, :, None, None] for a in (gamma, beta, mean, var)]
        return (x - v[2]) / np.sqrt(v[3] + eps) * v[0] + v[1]

    return r, fn


def activation(kind: str):
    if kind == "SiLU":
        return rec("torch.nn.modules.activation.SiLU", inplace=True), lambda x: x * sigmoid(x)
    if kind == "LeakyReLU":
        r = rec("torch.nn.modules.activation.LeakyReLU", negative_slope=0.1, inplace=True)
        return r, lambda x: np.where(x > 0, x, 0.1 * x)
    raise AssertionError(kind)


def conv_block(c1: int, c2: int, k: int = 1, s: int = 1, g: int = 1, act: str = "SiLU", fused: bool = False):
    """models.common.Conv; `fused`: as after yolov7's fuse() (a conv with bias, no bn)."""
    conv, fconv = conv2d(c1, c2, k, s, g, bias=fused)
    a, fact = activation(act)
    if fused:
        return rec("models.common.Conv", {"conv": conv, "act": a}), lambda x: fact(fconv(x))
    bn, fbn = batchnorm(c2)
    return rec("models.common.Conv", {"conv": conv, "bn": bn, "act": a}), lambda x: fact(fbn(fconv(x)))


def repconv(c1: int, c2: int):
    """models.common.RepConv (k=3, s=1), not yet fused: dense 3x3 + 1x1 (+ identity BN when c1 == c2)."""
    c3, fc3 = conv2d(c1, c2, 3)
    b3, fb3 = batchnorm(c2)
    c1x1, fc1 = conv2d(c1, c2, 1, p=0)
    b1, fb1 = batchnorm(c2)
    ident, fid = batchnorm(c1) if c1 == c2 else (None, lambda x: 0.0)
    a, fact = activation("SiLU")
    seq = "torch.nn.modules.container.Sequential"
    r = rec(
        "models.common.RepConv",
        {"act": a, "rbr_identity": ident, "rbr_dense": rec(seq, {"0": c3, "1": b3}),
         "rbr_1x1": rec(seq, {"0": c1x1, "1": b1})},
        deploy=False, groups=1, in_channels=c1, out_channels=c2,
    )  # fmt: skip
    return r, lambda x: fact(fb3(fc3(x)) + fb1(fc1(x)) + fid(x))


def maxpool(k: int, s: int, p: int):
    r = rec(
        "torch.nn.modules.pooling.MaxPool2d", kernel_size=k, stride=s, padding=p, dilation=1,
        return_indices=False, ceil_mode=False,
    )  # fmt: skip
    return r, lambda x: np_maxpool(x, k, s, p)


def sppcspc(c1: int, c2: int, ks: tuple[int, ...] = (3, 5)):
    c_ = c2
    cv = {i: conv_block(*args) for i, args in {
        1: (c1, c_), 2: (c1, c_), 3: (c_, c_, 3), 4: (c_, c_), 5: ((len(ks) + 1) * c_, c_),
        6: (c_, c_, 3), 7: (2 * c_, c2),
    }.items()}  # fmt: skip
    pools = [maxpool(k, 1, k // 2) for k in ks]
    ml = rec("torch.nn.modules.container.ModuleList", {str(j): p[0] for j, p in enumerate(pools)})
    r = rec("models.common.SPPCSPC", {**{f"cv{i}": cv[i][0] for i in (1, 2, 3, 4)}, "m": ml,
                                      **{f"cv{i}": cv[i][0] for i in (5, 6, 7)}})  # fmt: skip

    def fn(x: np.ndarray) -> np.ndarray:
        f = {i: cv[i][1] for i in cv}
        x1 = f[4](f[3](f[1](x)))
        y1 = f[6](f[5](np.concatenate([x1] + [p[1](x1) for p in pools], 1)))
        return f[7](np.concatenate([y1, f[2](x)], 1))

    return r, fn


def downc(c1: int, c2: int, k: int = 2):
    cv1, f1 = conv_block(c1, c1)
    cv2, f2 = conv_block(c1, c2 // 2, 3, k)
    cv3, f3 = conv_block(c1, c2 // 2)
    mp, fmp = maxpool(k, k, 0)
    r = rec("models.common.DownC", {"cv1": cv1, "cv2": cv2, "cv3": cv3, "mp": mp})
    return r, lambda x: np.concatenate([f2(f1(x)), f3(fmp(x))], 1)


NC, NA = 3, 2
ANCHORS_PX = np.array([[10, 13, 16, 30], [30, 61, 62, 45], [116, 90, 156, 198]], dtype=F64).reshape(3, NA, 2)
STRIDES = np.array([8.0, 16.0, 32.0], dtype=np.float32)


def head(kind: str, ch: list[int]):
    """A detection head record and its forward, as the yolov7 (main) or u7 (ISegment) code runs it."""
    nl = len(STRIDES)
    nm = 4 if kind == "ISegment" else 0
    no = NC + 5 + nm
    convs = [conv2d(c, NA * no, 1, bias=True, p=0) for c in ch[:nl]]
    ia = [t16(1, c, 1, 1, scale=0.05) for c in ch[:nl]]
    im_channels = NA * (NC + 5)  # ISegment's ImplicitM keeps IDetect's count: unusable, and unused
    im = [t16(1, im_channels, 1, 1, scale=0.05, offset=1.0) for _ in ch[:nl]]
    ml = "torch.nn.modules.container.ModuleList"
    modules: dict[str, Any] = {"m": rec(ml, {str(i): c[0] for i, c in enumerate(convs)})}
    if kind != "Detect":
        modules["ia"] = rec(
            ml, {str(i): rec("models.common.ImplicitA", params={"implicit": a}) for i, a in enumerate(ia)}
        )
        modules["im"] = rec(
            ml, {str(i): rec("models.common.ImplicitM", params={"implicit": m}) for i, m in enumerate(im)}
        )
    if kind == "IAuxDetect":
        modules["m2"] = rec(
            ml, {str(i): conv2d(c, NA * no, 1, bias=True, p=0)[0] for i, c in enumerate(ch[nl:])}
        )
    anchors = (ANCHORS_PX / STRIDES[:, None, None]).astype(np.float16)  # in strides, as yolov7 keeps them
    buffers: dict[str, Any] = {"anchors": anchors}
    attrs: dict[str, Any] = {
        "nc": NC,
        "no": no,
        "nl": nl,
        "na": NA,
        "stride": STRIDES,
        "grid": [np.zeros(1)] * nl,
    }
    if kind == "ISegment":  # u7 branch: anchor_grid is a plain list, computed at run time; no `im`
        modules["proto"] = rec("models.common.Proto")
        attrs.update(nm=nm, npr=8, anchor_grid=[np.zeros(1)] * nl, inplace=False)
        attrs["detect"] = record_class("models.yolo.IDetect.forward")
    else:  # main branch: anchor_grid is a buffer in pixels
        buffers["anchor_grid"] = ANCHORS_PX.reshape(nl, 1, NA, 1, 1, 2).astype(np.float16)
    r = rec(f"models.yolo.{kind}", modules, buffers=buffers, **attrs)

    def fn(xs: list[np.ndarray]) -> np.ndarray:
        z = []
        for i in range(nl):
            x = xs[i] + ia[i].astype(F64) if kind != "Detect" else xs[i]
            x = convs[i][1](x)
            if kind in ("IDetect", "IAuxDetect"):
                x = x * im[i].astype(F64)
            bs, _, ny, nx = x.shape
            y = sigmoid(x.reshape(bs, NA, no, ny, nx).transpose(0, 1, 3, 4, 2))
            yv, xv = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
            grid = np.stack((xv, yv), 2).reshape(1, 1, ny, nx, 2)
            xy = (y[..., 0:2] * 2 - 0.5 + grid) * STRIDES[i]
            anchor_grid = (
                anchors[i].astype(F64) * STRIDES[i]
                if kind == "ISegment"
                else ANCHORS_PX[i].astype(np.float16)
            ).reshape(1, NA, 1, 1, 2)
            wh = (y[..., 2:4] * 2) ** 2 * anchor_grid
            z.append(np.concatenate([xy, wh, y[..., 4 : 5 + NC]], -1).reshape(bs, -1, NC + 5))
        return np.concatenate(z, 1)

    return r, fn


def wrapped_pool(kind: str, k: int, s: int, p: int):
    """models.common.MP / SP: a MaxPool2d in `m`."""
    pool, fn = maxpool(k, s, p)
    return rec(f"models.common.{kind}", {"m": pool}), fn


def reorg(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x[..., ::2, ::2], x[..., 1::2, ::2], x[..., ::2, 1::2], x[..., 1::2, 1::2]], 1)


def upsample():
    name = "torch.nn.modules.upsampling.Upsample"
    r = rec(name, size=None, scale_factor=2.0, mode="nearest", align_corners=None)
    return r, lambda x: x.repeat(2, axis=2).repeat(2, axis=3)


def synthetic_model(head_kind: str):
    """A small yolov7-like model (input 64x64) using every supported layer type, and its forward."""
    L: list[tuple[Any, Any, Callable]] = []  # (f, record, forward)

    def add(f: Any, built: tuple[Any, Callable]) -> None:
        r, fn = built
        L.append((f, r, fn))

    add(-1, conv_block(3, 8, 3, 2))  # 0: stride 2
    add(-1, repconv(8, 8))  # 1: with the identity branch
    add(-1, wrapped_pool("MP", 2, 2, 0))  # 2: stride 4
    add(-1, conv_block(8, 16, 3, 2, act="LeakyReLU"))  # 3: stride 8
    add(-1, wrapped_pool("SP", 3, 1, 1))  # 4
    add(-1, (rec("models.common.ReOrg"), reorg))  # 5: stride 16, 64 channels
    add(-1, conv_block(64, 16, fused=True))  # 6
    add(-1, downc(16, 32))  # 7: stride 32
    add(-1, sppcspc(32, 16))  # 8
    add(-1, upsample())  # 9: stride 16
    add([-1, 6], (rec("models.common.Concat", d=1), lambda xs: np.concatenate(xs, 1)))  # 10
    add(-1, conv_block(32, 32, 3, g=4))  # 11
    add([-1, 10], (rec("models.common.Shortcut", d=0), lambda xs: xs[0] + xs[1]))  # 12
    add(4, repconv(16, 24))  # 13: stride 8, no identity branch
    f_head = [13, 12, 8, 13, 12, 8] if head_kind == "IAuxDetect" else [13, 12, 8]
    add(f_head, head(head_kind, [24, 32, 16, 24, 32, 16]))

    layers = OrderedDict()
    for i, (f, r, _) in enumerate(L):
        r.__dict__.update(f=f, i=i, type=type(r).global_name)
        layers[str(i)] = r
    model = rec(
        "models.yolo.Model",
        {"model": rec("torch.nn.modules.container.Sequential", layers)},
        names=["a", "b", "c"],
    )

    def forward(x: np.ndarray) -> np.ndarray:
        y: list[Any] = []
        for f, _, fn in L:
            if f != -1:
                x = y[f] if isinstance(f, int) else [x if j == -1 else y[j] for j in f]
            x = fn(x)
            y.append(x)
        return x

    return {"model": model, "ema": None}, forward


def run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x.astype(np.float32)})[0]


# --- synthetic model ------------------------------------------------------------------------------------


@pytest.mark.parametrize("head_kind", ["IDetect", "ISegment", "Detect", "IAuxDetect"])
@pytest.mark.parametrize("fp16", [False, True])
def test_synthetic_model_matches_numpy_forward(head_kind: str, fp16: bool) -> None:
    ckpt, forward = synthetic_model(head_kind)
    x = rng.uniform(0, 1, (2, 3, 64, 64))
    model = build_model(ckpt, img=64, fp16=fp16)
    got = run(model, x)
    want = forward(x)
    assert got.shape == want.shape == (2, (8 * 8 + 4 * 4 + 2 * 2) * NA, NC + 5)
    if fp16:  # weights rounded to float16 after folding (measured: 0.04 px, 4e-4)
        np.testing.assert_allclose(got[..., :4], want[..., :4], rtol=5e-3, atol=0.1)
        np.testing.assert_allclose(got[..., 4:], want[..., 4:], atol=2e-3)
    else:
        np.testing.assert_allclose(got[..., :4], want[..., :4], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(got[..., 4:], want[..., 4:], atol=1e-5)


def test_batchnorm_eps_comes_from_the_checkpoint() -> None:
    ckpt, forward = synthetic_model("IDetect")
    x = rng.uniform(0, 1, (1, 3, 64, 64))
    want = forward(x)
    for _, r in walk(ckpt["model"]):
        if type(r).global_name.endswith("BatchNorm2d"):
            r.__dict__["eps"] = 1e-5  # the writer must follow the record, not assume a value
    assert np.abs(run(build_model(ckpt, img=64), x) - want).max() > 1e-2


def test_unsupported_module_is_named_with_its_layer() -> None:
    ckpt, _ = synthetic_model("IDetect")
    layers = ckpt["model"]._modules["model"]._modules
    layers["4"] = rec("models.common.GhostSPPCSPC", f=-1, i=4, type="models.common.GhostSPPCSPC")
    with pytest.raises(ModelError, match=r"layer 4 .*unsupported module type models\.common\.GhostSPPCSPC"):
        build_model(ckpt, img=64)


def test_unsupported_activation_and_head_placement() -> None:
    ckpt, _ = synthetic_model("IDetect")
    layers = ckpt["model"]._modules["model"]._modules
    layers["3"]._modules["act"] = rec("torch.nn.modules.activation.GELU")
    with pytest.raises(
        ModelError, match=r"layer 3 .*unsupported activation torch\.nn\.modules\.activation\.GELU"
    ):
        build_model(ckpt, img=64)
    ckpt, _ = synthetic_model("IDetect")
    with pytest.raises(ModelError, match="not a multiple of the detection stride"):
        build_model(ckpt, img=48)
    with pytest.raises(ModelError, match="no model in the checkpoint"):
        build_model({"model": None, "epoch": 3}, img=64)


def test_import_writes_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, _ = synthetic_model("IDetect")
    monkeypatch.setattr(yolov7_onnx, "load_checkpoint", lambda path: ckpt)
    out = import_checkpoint(tmp_path / "in.pt", tmp_path / "sub" / "model.onnx", img=64)
    assert out == tmp_path / "sub" / "model.onnx" and onnx.load(out).graph.output[0].name == "output"
    ckpt["model"]._modules["model"]._modules["2"] = rec("models.common.Nope", f=-1, i=2)
    out.write_bytes(b"previous")
    with pytest.raises(ModelError, match="Nope"):
        import_checkpoint(tmp_path / "in.pt", out, img=64)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx"]  # no temporary file left


# --- the real checkpoint against the PyTorch export -----------------------------------------------------


def float32_copy(path: Path, out: Path) -> Path:
    """The reference ONNX evaluated in float32: its float16 weights, constants and Casts made float32.

    The reference (``yolov7-coco.onnx``) is PyTorch's export with every tensor cast to float16, so ONNX
    Runtime computes it in float16 and its output is float16 rounded (steps of 0.25 px at 256..511 and
    0.5 px at 512..1023). This copy is the same graph and the same (fp16-rounded) weights in float32.
    """
    model = onnx.load(path)
    fp16, fp32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    for init in model.graph.initializer:
        if init.data_type == fp16:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float32), init.name))
    for node in model.graph.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == fp16:
                a.i = fp32
            if node.op_type == "Constant" and a.name == "value" and a.t.data_type == fp16:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
    del model.graph.value_info[:]
    onnx.save(model, out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reference, the reference in float32, and the fp32 and fp16 imports of the same checkpoint."""
    ckpt, reference = shared_model("yolov7-seg.pt"), shared_model("yolov7-coco.onnx")
    folder = tmp_path_factory.mktemp("yolov7")
    out = {"reference": reference, "reference32": float32_copy(reference, folder / "reference32.onnx")}
    for name, fp16 in (("fp32", False), ("fp16", True)):
        t0 = time.perf_counter()
        out[name] = import_checkpoint(ckpt, folder / f"yolov7-{name}.onnx", fp16=fp16)
        print(f"import {name}: {time.perf_counter() - t0:.2f} s, {out[name].stat().st_size / 1e6:.1f} MB")
    return out


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    batch = []
    for path in tinycoco_images("val2017"):
        padded, _ = letterbox(cv2.imread(str(path)), 640, 640)
        batch.append(to_input_tensor(padded, swap_rb=True))
    return np.stack(batch)


@pytest.fixture(scope="module")
def outputs(models: dict[str, Path], images: np.ndarray) -> dict[str, np.ndarray]:
    out = {}
    for name, path in models.items():
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        t0 = time.perf_counter()
        out[name] = np.concatenate([session.run(None, {"images": img[None]})[0] for img in images])
        print(f"{name}: {(time.perf_counter() - t0) / len(images) * 1000:.0f} ms per image")
    return out


def matched_ious(base: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, float]:
    """Detections (conf 0.25, IoU 0.45) of two outputs paired per image: their IoUs, max score difference.

    Asserts the same number of detections and the same classes in every image, paired one to one.
    """
    params, ious, score = NmsParams(), [], 0.0
    for i in range(len(base)):
        want, have = detect_image(base[i], params), detect_image(cand[i], params)
        assert len(have) == len(want), f"image {i}: {len(have)} detections, reference {len(want)}"
        assert sorted(have[:, 5]) == sorted(want[:, 5]), f"image {i}: classes differ"
        iou = box_iou(want[:, :4], have[:, :4])
        iou[want[:, 5][:, None] != have[:, 5][None, :]] = 0  # pair within a class
        best = iou.argmax(axis=1)
        assert len(set(best.tolist())) == len(want), f"image {i}: detections do not pair one to one"
        ious.extend(iou[np.arange(len(want)), best])
        score = max(score, float(np.abs(have[best, 4] - want[:, 4]).max(initial=0.0)))
    return np.asarray(ious), score


@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_import_matches_pytorch_export(outputs: dict[str, np.ndarray], variant: str) -> None:
    got = outputs[variant]
    assert got.shape == outputs["reference"].shape == (6, 25200, 85)
    for base in ("reference", "reference32"):
        delta = np.abs(got - outputs[base])
        ious, score = matched_ious(outputs[base], got)
        print(
            f"{variant} vs {base}: raw max |Δ| {delta[..., :4].max():.3f} px, "
            f"scores {delta[..., 4:].max():.1e}; "
            f"{len(ious)} detections, IoU min {ious.min():.4f} median {np.median(ious):.5f}, "
            f"{(ious < 0.99).sum()} below 0.99, scores within {score:.1e}"
        )
        assert delta[..., 4:].max() < 1e-2 and score < 1e-2
        assert len(ious) > 100
    # Against the reference as shipped (computed in float16, output rounded to float16) no import can
    # reach IoU 0.99 on every box: the reference graph itself, evaluated in float32, gets 0.951 (23 of
    # 143 small boxes below 0.99). Hence a median there, and the strict bounds against the float32 copy.
    ious, _ = matched_ious(outputs["reference"], got)
    assert ious.min() >= 0.94 and np.median(ious) >= 0.995
    ious, _ = matched_ious(outputs["reference32"], got)
    delta = np.abs(got - outputs["reference32"])
    if variant == "fp32":  # the reference's weights are rounded to float16, these are not
        assert ious.min() >= 0.99
        assert delta[..., :4].max() < 4.0
    else:  # the same rounded weights: equal up to float32 noise; NMS may swap near-tied boxes
        assert ious.min() >= 0.97 and np.median(ious) >= 0.9999
        assert delta[..., :4].max() < 0.25 and delta[..., 4:].max() < 1e-3


def test_imported_graph(models: dict[str, Path]) -> None:
    fp32, fp16 = onnx.load(models["fp32"]), onnx.load(models["fp16"])
    for model in (fp32, fp16):
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
        assert "ScatterND" not in {n.op_type for n in model.graph.node}
        (inp,) = model.graph.input
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert (inp.name, inp.type.tensor_type.elem_type, dims) == (
            "images",
            onnx.TensorProto.FLOAT,
            ["batch", 3, 640, 640],
        )
        (out,) = model.graph.output
        assert out.name == "output" and out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        meta = {p.key: p.value for p in model.metadata_props}
        assert len(json.loads(meta["names"])) == 80 and meta["source"] == "yolov7-seg.pt"
    assert {i.data_type for i in fp32.graph.initializer if i.dims and len(i.dims) == 4} == {
        onnx.TensorProto.FLOAT
    }
    assert {i.data_type for i in fp16.graph.initializer if len(i.dims) == 4} == {onnx.TensorProto.FLOAT16}
    assert models["fp16"].stat().st_size < 0.55 * models["fp32"].stat().st_size


def test_dynamic_batch(models: dict[str, Path], images: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    session = ort.InferenceSession(str(models["fp32"]), providers=["CPUExecutionProvider"])
    batch = session.run(None, {"images": images[:2]})[0]
    np.testing.assert_allclose(batch, outputs["fp32"][:2], rtol=1e-5, atol=1e-4)


def test_imported_model_reproduces_the_reference_map(models: dict[str, Path], tmp_path: Path) -> None:
    """The checkpoint imported without PyTorch scores the mAP measured on PyTorch's export (0.489 on the
    32-image set, conf 0.001, NMS 0.65, multi-label), within the issue's ±0.003, through the whole
    deployed pipeline (`yolostream eval`)."""
    from streamer.accuracy.evaluate import EvalParams, evaluate, format_table
    from streamer.config import parse_config
    from tests.support.paths import SHARED, coco_json

    cfg = parse_config(
        f"model:\n  onnx: {models['fp32']}\nengine:\n  max_batch: 2\nsources:\n  - id: x\n    url: x.mp4\n",
        base_dir=tmp_path,
    )
    result = evaluate(cfg, coco_json("train2017"), SHARED / "data/tinycoco/images/train2017", EvalParams())
    print(format_table(result))
    assert abs(result.map - 0.489) <= 0.003, format_table(result)
