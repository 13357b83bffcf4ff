"""Output-layout detection on ONNX graphs the tests write: one graph per yolov7 export layout (as
``export.py`` writes them: yolov7's numeric dim_param strings included) and graphs that match none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from streamer.engine.device import OutputLayout, TensorSpec
from streamer.engine.layout import ImageInput, detect_layout, detect_num_classes, image_input
from streamer.errors import ModelError
from tests.support.models import write_oracle_model

N = 20  # candidate boxes
NC = 80


def _model(
    nodes: list[onnx.NodeProto], outputs: list[onnx.ValueInfoProto], inits=(), opset=12
) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "t",
        [
            helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64]),
            helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["batch", N, 5 + NC]),
        ],
        outputs,
        initializer=list(inits),
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("TRT", 1)]
    )


def _slices() -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """raw [batch, N, 85] → boxes [batch, N, 4] and scores [batch, N, 80], as yolov7's End2End does."""
    inits = [
        numpy_helper.from_array(np.array(v, np.int64), name)
        for name, v in (("s0", [0]), ("e4", [4]), ("s5", [5]), ("e85", [5 + NC]), ("ax2", [2]))
    ]
    nodes = [
        helper.make_node("Slice", ["raw", "s0", "e4", "ax2"], ["boxes"]),
        helper.make_node("Slice", ["raw", "s5", "e85", "ax2"], ["scores"]),
    ]
    return nodes, inits


def efficient_nms_model(names=("num_dets", "det_boxes", "det_scores", "det_classes"), order=(0, 1, 2, 3)):
    nodes, inits = _slices()
    nodes.append(
        helper.make_node(
            "EfficientNMS_TRT",
            ["boxes", "scores"],
            list(names),
            domain="TRT",
            background_class=-1,
            box_coding=1,
            iou_threshold=0.45,
            max_output_boxes=100,
            plugin_version="1",
            score_activation=0,
            score_threshold=0.25,
        )
    )
    # yolov7 export.py --end2end rewrites every output dim as a dim_param string: batch, "1", "100", "4"
    dims = [["batch", "1"], ["batch", "100", "4"], ["batch", "100"], ["batch", "100"]]
    types = [TensorProto.INT32, TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT32]
    outs = [helper.make_tensor_value_info(names[i], types[i], dims[i]) for i in order]
    return _model(nodes, outs, inits)


def onnx_nms_model(columns: int = 7) -> onnx.ModelProto:
    nodes, inits = _slices()
    inits += [
        numpy_helper.from_array(np.array([100], np.int64), "max_obj"),
        numpy_helper.from_array(np.array([0.45], np.float32), "iou"),
        numpy_helper.from_array(np.array([0.25], np.float32), "score"),
    ]
    nodes += [
        helper.make_node("ReduceMax", ["scores"], ["max_score"], axes=[2], keepdims=1),
        helper.make_node("ArgMax", ["scores"], ["category"], axis=2, keepdims=1),
        helper.make_node("Transpose", ["max_score"], ["max_score_t"], perm=[0, 2, 1]),
        helper.make_node(
            "NonMaxSuppression", ["boxes", "max_score_t", "max_obj", "iou", "score"], ["selected"]
        ),
        helper.make_node("Cast", ["selected"], ["output"], to=TensorProto.FLOAT),
    ]
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["num_dets", columns])
    return _model(nodes, [out], inits)


def grid_model(shape=("batch", N, 5 + NC), elem=TensorProto.FLOAT) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", ["raw"], ["output"])]
    return _model(nodes, [helper.make_tensor_value_info("output", elem, list(shape))])


def test_grid_layout() -> None:
    layout, outputs = detect_layout(grid_model())
    assert layout is OutputLayout.GRID
    assert outputs == (TensorSpec("output", "float32", (-1, N, 85)),)


def test_grid_layout_of_a_model_written_by_the_project(tmp_path: Path) -> None:
    model = onnx.load(str(write_oracle_model(tmp_path / "oracle.onnx", input_size=(64, 96), num_classes=3)))
    assert detect_layout(model) == (OutputLayout.GRID, (TensorSpec("output", "float32", (-1, 1, 8)),))


def test_grid_layout_fixed_batch_is_still_the_batch_axis() -> None:
    _, (spec,) = detect_layout(grid_model(shape=(1, N, 85)))
    assert spec.shape == (-1, N, 85)
    assert spec.shape_for(3) == (3, N, 85)


def test_grid_layout_with_symbolic_boxes() -> None:
    _, (spec,) = detect_layout(grid_model(shape=("batch", "anchors", 85)))
    assert spec.shape == (-1, -1, 85)


def test_efficient_nms_layout() -> None:
    model = efficient_nms_model()
    layout, outputs = detect_layout(model)
    assert layout is OutputLayout.EFFICIENT_NMS
    assert outputs == (
        TensorSpec("num_dets", "int32", (-1, 1)),
        TensorSpec("det_boxes", "float32", (-1, 100, 4)),
        TensorSpec("det_scores", "float32", (-1, 100)),
        TensorSpec("det_classes", "int32", (-1, 100)),
    )
    assert detect_num_classes(model) == NC


def test_efficient_nms_outputs_in_another_order_come_back_in_plugin_order() -> None:
    _, outputs = detect_layout(efficient_nms_model(order=(3, 1, 0, 2)))
    assert [o.name for o in outputs] == ["num_dets", "det_boxes", "det_scores", "det_classes"]


def test_efficient_nms_roles_follow_the_plugin_outputs_whatever_their_names() -> None:
    _, outputs = detect_layout(efficient_nms_model(names=("n", "b", "s", "c"), order=(2, 0, 3, 1)))
    assert [o.name for o in outputs] == ["n", "b", "s", "c"]
    assert outputs[1].shape == (-1, 100, 4)


def test_onnx_nms_layout() -> None:
    model = onnx_nms_model()
    layout, outputs = detect_layout(model)
    assert layout is OutputLayout.ONNX_NMS
    assert outputs == (TensorSpec("output", "float32", (-1, 7)),)
    assert detect_num_classes(model) == NC


def test_num_classes_unknown_for_a_grid_model() -> None:
    assert detect_num_classes(grid_model()) is None


@pytest.mark.parametrize(
    ("model", "why"),
    [
        (
            _model(
                [helper.make_node("Identity", ["raw"], [f"head{i}"]) for i in range(3)],
                [
                    helper.make_tensor_value_info(f"head{i}", TensorProto.FLOAT, [1, 3, 8, 8, 85])
                    for i in range(3)
                ],
            ),
            "3 outputs and no NMS node",
        ),
        (grid_model(shape=("batch", N * 85)), "rank 2, expected 3"),
        (grid_model(shape=("batch", N, 5)), "5 values per box"),
        (grid_model(elem=TensorProto.INT32), "is int32, expected float32/float16"),
        (onnx_nms_model(columns=6), "last dimension 6, expected 7"),
        (onnx.ModelProto(), "0 outputs and no NMS node"),
    ],
)
def test_unknown_layouts_raise_model_error_naming_the_outputs(model: onnx.ModelProto, why: str) -> None:
    with pytest.raises(ModelError) as err:
        detect_layout(model)
    message = str(err.value)
    assert why in message
    assert "Outputs found:" in message


def test_efficient_nms_with_unexpected_output_names() -> None:
    model = efficient_nms_model()
    model.graph.output[2].name = "scores_renamed"
    with pytest.raises(
        ModelError, match=r"EfficientNMS_TRT outputs not found.*det_scores.*scores_renamed \[\?, 100\]"
    ):
        detect_layout(model)


def test_efficient_nms_error_names_each_output_with_its_shape() -> None:
    model = efficient_nms_model()
    del model.graph.output[3]
    with pytest.raises(ModelError) as err:
        detect_layout(model)
    assert "should have 4 outputs, has 3" in str(err.value)
    assert "num_dets [?, 1] int32; det_boxes [?, 100, 4] float" in str(err.value)


def test_image_input() -> None:
    model = grid_model()
    with pytest.raises(ModelError, match=r"expected one NCHW image input, found: images .*, raw"):
        image_input(model)
    del model.graph.input[1]  # leave only `images`
    assert image_input(model) == ImageInput("images", "float32", None, 64, 64)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    assert image_input(model) == ImageInput("images", "float32", 4, 64, 64)


@pytest.mark.parametrize(
    ("shape", "elem", "message"),
    [
        (["batch", 3, 64], TensorProto.FLOAT, "expected one NCHW image input, found: images"),
        (["batch", 1, 64, 64], TensorProto.FLOAT, "has 1 channels, expected 3"),
        (["batch", 3, 64, 64], TensorProto.UINT8, "is uint8, expected float32"),
    ],
)
def test_image_input_errors(shape: list, elem: int, message: str) -> None:
    graph = helper.make_graph([], "t", [helper.make_tensor_value_info("images", elem, shape)], [])
    with pytest.raises(ModelError, match=message):
        image_input(helper.make_model(graph))
