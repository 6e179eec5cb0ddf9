"""Dependency analysis + channel removal on small onnx.helper graphs, one test per coupling pattern.

Each pattern test zeroes the channels it removes in the *original* model (weights and bias of every coupled
source, BatchNorm bias/mean), removes them, and checks the shapes and that the pruned model computes exactly what
the original computes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from accelserve.onnx_io import check_model
from accelserve.passes.pruning.dependency import PruningPlan, analyze
from accelserve.passes.pruning.graph import prepare, run, sample_batches
from accelserve.passes.pruning.surgery import remove_channels
from tests.passes.pruning.builders import GraphBuilder, node_by_name, set_weight, weight, zero_channels


def prune_exact(model: onnx.ModelProto, choice: dict[str, Sequence[int]]) -> tuple[PruningPlan, onnx.ModelProto]:
    """Remove channel classes (by a source node of the group) and check the result equals the original."""
    prepared = prepare(model)
    plan = analyze(prepared)
    by_group = {}
    for source, classes in choice.items():
        group = plan.group_of(source)
        assert group is not None and group.prunable, plan.table()
        by_group[group.index] = list(classes)
    removed = plan.removed_ids(by_group)
    pruned = remove_channels(prepared, plan, removed)
    check_model(pruned, what="pruned test model")
    batches = sample_batches(prepared, count=2, batch=3)
    want, got = run(prepared, batches), run(pruned, batches)
    for name in want:
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
    return plan, pruned


def class_is_channel(plan: PruningPlan, source: str) -> None:
    """In the tests below class c of a group is channel c of every coupled source."""
    group = plan.group_of(source)
    bases = {s.node: s.base for s in plan.sources}
    for c, ids in enumerate(group.channels):
        assert sorted(ids.tolist()) == sorted(bases[s] + c for s in group.sources)


def head(g: GraphBuilder, x: str, c: int, n: int = 4) -> str:
    """Conv -> GlobalAveragePool -> Flatten -> Gemm: a consumer that reaches the output."""
    y = g.op("Flatten", [g.op("GlobalAveragePool", [g.relu(g.conv(x, c, 6, name="head_conv"))])])
    return g.gemm(y, 6, n, name="fc")


def test_conv_batchnorm_chain() -> None:
    g = GraphBuilder()
    a = g.relu(g.bn(g.conv(g.input("x", ["N", 3, 8, 8]), 3, 8, name="a"), 8, name="a_bn"))
    model = g.build([head(g, a, 8)])
    zero_channels(model, "a", [1, 5])
    zero_channels(model, "a_bn", [1, 5])
    plan, pruned = prune_exact(model, {"a": [1, 5]})
    class_is_channel(plan, "a")
    assert weight(pruned, "a").shape == (6, 3, 3, 3)
    assert weight(pruned, "a_bn", 1).shape == (6,)
    assert weight(pruned, "head_conv").shape == (6, 6, 3, 3)
    assert plan.group_of("a").consumers == ["head_conv"]


def test_residual_add_couples_all_addends() -> None:
    g = GraphBuilder()
    stem = g.relu(g.bn(g.conv(g.input("x", ["N", 3, 8, 8]), 3, 8, name="stem"), 8, name="stem_bn"))
    y = g.relu(g.bn(g.conv(stem, 8, 8, name="c1"), 8, name="c1_bn"))
    y = g.bn(g.conv(y, 8, 8, name="c2"), 8, name="c2_bn")
    r = g.relu(g.op("Add", [stem, y], name="residual"))
    model = g.build([head(g, r, 8)])
    prepared = prepare(model)
    plan = analyze(prepared)
    group = plan.group_of("stem")
    assert set(group.sources) == {"stem", "c2"}
    assert plan.group_of("c1").index != group.index
    assert set(group.consumers) == {"c1", "head_conv"}
    for name in ("stem", "stem_bn", "c2", "c2_bn"):
        zero_channels(model, name, [2, 7])
    plan, pruned = prune_exact(model, {"c2": [2, 7]})
    class_is_channel(plan, "stem")
    assert weight(pruned, "stem").shape[0] == weight(pruned, "c2").shape[0] == 6
    assert weight(pruned, "c1").shape == (8, 6, 3, 3)


def test_concat_offsets() -> None:
    g = GraphBuilder()
    x = g.input("x", ["N", 3, 6, 6])
    cat = g.op("Concat", [g.relu(g.conv(x, 3, 4, name="a")), g.relu(g.conv(x, 3, 6, name="b"))], axis=1)
    model = g.build([g.relu(g.conv(cat, 10, 5, name="c"))])
    zero_channels(model, "a", [1])
    zero_channels(model, "b", [0, 5])
    plan, pruned = prune_exact(model, {"a": [1], "b": [0, 5]})
    c_slice = next(s for s in plan.slices if s.node == "c" and s.role == "consumer")
    bases = {s.node: s.base for s in plan.sources}
    assert c_slice.ids.tolist() == [bases["a"] + i for i in range(4)] + [bases["b"] + i for i in range(6)]
    assert weight(pruned, "c").shape == (5, 7, 3, 3)


def test_concat_with_a_graph_input_keeps_its_positions() -> None:
    g = GraphBuilder()
    x = g.input("x", ["N", 3, 6, 6])
    cat = g.op("Concat", [g.relu(g.conv(x, 3, 4, name="a")), x], axis=1)
    model = g.build([g.relu(g.conv(cat, 7, 5, name="c"))])
    zero_channels(model, "a", [0, 3])
    _, pruned = prune_exact(model, {"a": [0, 3]})
    assert weight(pruned, "c").shape == (5, 5, 3, 3)


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv_follows_its_input_channels(multiplier: int) -> None:
    g = GraphBuilder()
    a = g.relu(g.bn(g.conv(g.input("x", ["N", 3, 8, 8]), 3, 8, name="a"), 8, name="a_bn"))
    d = g.relu(g.bn(g.conv(a, 8, 8 * multiplier, group=8, name="dw"), 8 * multiplier, name="dw_bn"))
    model = g.build([g.relu(g.conv(d, 8 * multiplier, 4, name="b"))])
    dropped = [0, 3]
    zero_channels(model, "a", dropped)
    zero_channels(model, "a_bn", dropped)
    dw_dropped = [c * multiplier + m for c in dropped for m in range(multiplier)]
    zero_channels(model, "dw", dw_dropped)
    zero_channels(model, "dw_bn", dw_dropped)
    plan, pruned = prune_exact(model, {"a": dropped})
    assert weight(pruned, "dw").shape == (6 * multiplier, 1, 3, 3)
    group_attr = next(a for a in node_by_name(pruned, "dw").attribute if a.name == "group")
    assert group_attr.i == 6
    assert weight(pruned, "b").shape == (4, 6 * multiplier, 3, 3)
    assert "dw" not in [s.node for s in plan.sources]


@pytest.mark.parametrize("form", ["flatten", "reshape_literal", "reshape_copy_batch"])
def test_flatten_or_reshape_into_gemm_expands_channels(form: str) -> None:
    g = GraphBuilder()
    a = g.relu(g.conv(g.input("x", ["N", 3, 4, 4]), 3, 4, name="a"))
    if form == "flatten":
        flat = g.op("Flatten", [a])
    else:
        shape = [-1, 64] if form == "reshape_literal" else [0, -1]
        flat = g.op("Reshape", [a, g.const(np.array(shape, dtype=np.int64), "shape")], name="reshape")
    model = g.build([g.gemm(flat, 64, 5, name="fc")])
    zero_channels(model, "a", [2])
    _, pruned = prune_exact(model, {"a": [2]})
    assert weight(pruned, "fc").shape == (5, 48)
    if form == "reshape_literal":
        assert weight(pruned, "reshape", 1).tolist() == [-1, 48]
    if form == "reshape_copy_batch":
        assert weight(pruned, "reshape", 1).tolist() == [0, -1]


def test_transpose_nhwc_round_trip_and_channels_last_matmul() -> None:
    g = GraphBuilder()
    x = g.input("x", ["N", 3, 5, 5])
    a = g.conv(x, 3, 6, name="a")
    nhwc = g.relu(g.op("Transpose", [a], perm=[0, 2, 3, 1]))
    back = g.relu(g.conv(g.op("Transpose", [nhwc], perm=[0, 3, 1, 2]), 6, 4, name="b"))
    side = g.matmul(g.op("Transpose", [g.conv(x, 3, 6, name="c")], perm=[0, 2, 3, 1]), 6, 3, name="mm")
    model = g.build([back, side])
    zero_channels(model, "a", [4])
    zero_channels(model, "c", [0, 1])
    _, pruned = prune_exact(model, {"a": [4], "c": [0, 1]})
    assert weight(pruned, "b").shape == (4, 5, 3, 3)
    assert weight(pruned, "mm").shape == (4, 3)


def test_matmul_mlp_slices_the_bias() -> None:
    g = GraphBuilder()
    h = g.matmul(g.input("x", ["N", 7, 16]), 16, 32, name="fc1")
    h = g.relu(g.op("Add", [h, g.const(np.random.default_rng(1).standard_normal(32).astype(np.float32), "b1")],
                    name="bias1"))
    model = g.build([g.matmul(h, 32, 16, name="fc2")])
    dropped = [3, 10, 31]
    w = weight(model, "fc1")
    w[:, dropped] = 0
    set_weight(model, "fc1", w)
    b = weight(model, "bias1")
    b[dropped] = 0
    set_weight(model, "bias1", b)
    _, pruned = prune_exact(model, {"fc1": dropped})
    assert weight(pruned, "fc1").shape == (16, 29)
    assert weight(pruned, "bias1", 1).shape == (29,)
    assert weight(pruned, "fc2").shape == (29, 16)


def test_split_glu_couples_the_two_halves() -> None:
    g = GraphBuilder()
    a = g.conv(g.input("x", ["N", 3, 6, 6]), 3, 8, name="a")
    first, second = g.op("Split", [a, g.const(np.array([4, 4], dtype=np.int64))], name="split", outputs=2, axis=1)
    glu = g.op("Mul", [first, g.op("Sigmoid", [second])])
    model = g.build([g.relu(g.conv(glu, 4, 3, name="b"))])
    zero_channels(model, "a", [1, 5])  # the pair that the Mul couples
    plan, pruned = prune_exact(model, {"a": [1]})
    assert plan.group_of("a").size == 4
    assert weight(pruned, "a").shape == (6, 3, 3, 3)
    split_sizes = next(t for t in pruned.graph.initializer if t.name == node_by_name(pruned, "split").input[1])
    assert numpy_helper.to_array(split_sizes).tolist() == [3, 3]
    assert weight(pruned, "b").shape == (3, 3, 3, 3)


def test_squeeze_excitation_mul_couples_gate_and_features() -> None:
    g = GraphBuilder()
    a = g.relu(g.conv(g.input("x", ["N", 3, 6, 6]), 3, 8, name="a"))
    s = g.relu(g.conv(g.op("GlobalAveragePool", [a]), 8, 2, k=1, name="se1"))
    gate = g.op("Sigmoid", [g.conv(s, 2, 8, k=1, name="se2")])
    model = g.build([g.relu(g.conv(g.op("Mul", [a, gate]), 8, 4, name="b"))])
    zero_channels(model, "a", [0, 6])
    plan, pruned = prune_exact(model, {"a": [0, 6]})
    assert set(plan.group_of("a").sources) == {"a", "se2"}
    assert weight(pruned, "se1").shape == (2, 6, 1, 1)
    assert weight(pruned, "se2").shape == (6, 2, 1, 1)


# -- what the analysis refuses, with the reason ----------------------------------------------------------------
def _reasons(model: onnx.ModelProto, source: str, exclude: Sequence[str] = ()) -> list[str]:
    plan = analyze(prepare(model), exclude)
    group = plan.group_of(source)
    assert not group.prunable
    return group.reasons


def test_grouped_conv_is_kept_with_reason() -> None:
    g = GraphBuilder()
    a = g.relu(g.conv(g.input("x", ["N", 4, 6, 6]), 4, 8, name="a"))
    model = g.build([g.relu(g.conv(g.relu(g.conv(a, 8, 8, group=2, name="grouped")), 8, 3, name="b"))])
    assert any("grouped Conv 'grouped'" in r for r in _reasons(model, "a"))


def test_reshape_that_splits_channels_is_kept() -> None:
    g = GraphBuilder()
    a = g.relu(g.conv(g.input("x", ["N", 3, 4, 4]), 3, 8, name="a"))
    r = g.op("Reshape", [a, g.const(np.array([-1, 2, 4, 16], dtype=np.int64))], name="heads")
    model = g.build([g.op("Softmax", [r], axis=-1)])
    assert any("Reshape 'heads'" in r for r in _reasons(model, "a"))


def test_channel_mixing_and_unknown_ops_are_kept() -> None:
    g = GraphBuilder()
    x = g.input("x", ["N", 3, 4, 4])
    soft = g.op("Softmax", [g.conv(x, 3, 8, name="a")], axis=1, name="softmax")
    lrn = g.op("LRN", [g.conv(x, 3, 8, name="b")], size=3, name="lrn")
    model = g.build([g.conv(soft, 8, 2, name="c1"), g.conv(lrn, 8, 2, name="c2")])
    assert any("normalizes over the channel axis" in r for r in _reasons(model, "a"))
    assert any("LRN node 'lrn' is not understood" in r for r in _reasons(model, "b"))


def test_graph_output_user_exclusion_and_untagged_addend_are_kept() -> None:
    g = GraphBuilder()
    x = g.input("x", ["N", 8, 4, 4])
    a = g.relu(g.conv(x, 8, 8, name="a"))
    b = g.relu(g.conv(x, 8, 8, name="b"))
    c = g.op("Add", [g.conv(x, 8, 8, name="c"), x])  # residual with the graph input: input channels stay
    model = g.build([g.conv(a, 8, 2, name="out_conv"), g.conv(b, 8, 2, name="d"), g.conv(c, 8, 2, name="e")])
    assert any("graph output" in r for r in _reasons(model, "out_conv"))
    assert any("excluded" in r for r in _reasons(model, "b", exclude=["b"]))
    assert any("no source owns" in r for r in _reasons(model, "c"))
    assert analyze(prepare(model)).group_of("a").prunable


def test_plan_table_lists_every_group() -> None:
    g = GraphBuilder()
    a = g.relu(g.conv(g.input("x", ["N", 3, 4, 4]), 3, 8, name="a"))
    plan = analyze(prepare(g.build([g.conv(a, 8, 2, name="b")])))
    table = plan.table()
    assert "prunable" in table and "graph output" in table
    assert [row["sources"] for row in plan.summary()] == [["a"], ["b"]]


def test_untracked_secondary_output_blocks() -> None:
    g = GraphBuilder()
    a = g.conv(g.input("x", ["N", 3, 4, 4]), 3, 8, name="a")
    scale, bias = g.const(np.ones(4, np.float32)), g.const(np.zeros(4, np.float32))
    y, mean = g.op("LayerNormalization", [a, scale, bias], name="ln", outputs=2, axis=-1)
    model = g.build([g.conv(y, 8, 2, name="b"), g.op("Flatten", [mean])])
    assert any("output 'ln_out1' of LayerNormalization 'ln' is not tracked" in r for r in _reasons(model, "a"))


def test_computed_flatten_target_from_shape_is_rewritten() -> None:
    """tf2onnx's Flatten: Reshape(x_nhwc, Concat(Slice(Gather(Shape(x), perm), 0, 1), [C*H*W]))."""
    g = GraphBuilder()
    a = g.relu(g.conv(g.input("x", ["N", 3, 4, 4]), 3, 8, name="a"))
    nhwc = g.op("Transpose", [a], perm=[0, 2, 3, 1])
    dims = g.op("Gather", [g.op("Shape", [a]), g.const(np.array([0, 2, 3, 1], dtype=np.int64))])
    batch = g.op("Slice", [dims, g.const(np.array([0], np.int64)), g.const(np.array([1], np.int64)),
                           g.const(np.array([0], np.int64))])
    target = g.op("Concat", [batch, g.const(np.array([128], dtype=np.int64), "flat_size")], name="target", axis=0)
    flat = g.op("Reshape", [nhwc, target], name="flatten")
    model = g.build([g.gemm(flat, 128, 5, name="fc")])
    zero_channels(model, "a", [0, 7])
    plan, pruned = prune_exact(model, {"a": [0, 7]})
    assert plan.group_of("a").consumers == ["fc"]
    assert weight(pruned, "target", 1).tolist() == [96]
    assert weight(pruned, "fc").shape == (5, 96)


def test_channel_count_used_in_arithmetic_blocks() -> None:
    g = GraphBuilder()
    a = g.relu(g.conv(g.input("x", ["N", 3, 4, 4]), 3, 8, name="a"))
    c = g.op("Gather", [g.op("Shape", [a]), g.const(np.array([1], dtype=np.int64))])
    doubled = g.op("Mul", [c, g.const(np.array([2], dtype=np.int64))], name="double")
    model = g.build([g.conv(a, 8, 2, name="b"), g.op("Cast", [doubled], to=onnx.TensorProto.FLOAT)])
    assert any("Mul 'double' computes with a channel count" in r for r in _reasons(model, "a"))


def _unused_initializers(model: onnx.ModelProto) -> list[str]:
    used = {i for n in model.graph.node for i in n.input}
    return [t.name for t in model.graph.initializer if t.name not in used]


def test_split_sizes_as_an_attribute_before_opset_13() -> None:
    g = GraphBuilder(opset=11)
    a = g.conv(g.input("x", ["N", 3, 6, 6]), 3, 8, name="a")
    first, second = g.op("Split", [a], name="split", outputs=2, axis=1, split=[4, 4])
    glu = g.op("Mul", [first, g.op("Sigmoid", [second])])
    model = g.build([g.relu(g.conv(glu, 4, 3, name="b"))])
    zero_channels(model, "a", [1, 5])
    _, pruned = prune_exact(model, {"a": [1]})
    split = node_by_name(pruned, "split")
    assert list(split.input) == [split.input[0]]  # still one input: the sizes stay an attribute
    assert [list(a.ints) for a in split.attribute if a.name == "split"] == [[3, 3]]
    assert _unused_initializers(pruned) == []


def test_split_sizes_replace_num_outputs_from_opset_18() -> None:
    g = GraphBuilder(opset=18)
    a = g.conv(g.input("x", ["N", 3, 6, 6]), 3, 8, name="a")
    first, second = g.op("Split", [a], name="split", outputs=2, axis=1, num_outputs=2)
    glu = g.op("Mul", [first, g.op("Sigmoid", [second])])
    model = g.build([g.relu(g.conv(glu, 4, 3, name="b"))])
    zero_channels(model, "a", [1, 5])
    _, pruned = prune_exact(model, {"a": [1]})
    split = node_by_name(pruned, "split")
    assert [a.name for a in split.attribute] == ["axis"]  # num_outputs and explicit sizes may not both be given
    sizes = next(t for t in pruned.graph.initializer if t.name == split.input[1])
    assert numpy_helper.to_array(sizes).tolist() == [3, 3] and numpy_helper.to_array(sizes).dtype == np.int64
    assert _unused_initializers(pruned) == []


def test_a_weight_shared_with_an_unpruned_node_is_copied_not_cut() -> None:
    g = GraphBuilder()
    x = g.input("x", ["N", 3, 6, 6])
    a = g.conv(x, 3, 8, name="a")
    shared = node_by_name_in(g, "a").input[1]
    kept = g.op("Conv", [x, shared], "kept", kernel_shape=[3, 3], pads=[1] * 4)  # same weight, output is the graph's
    model = g.build([g.relu(g.conv(a, 8, 3, name="b")), kept])
    zero_channels(model, "a", [2, 6])  # zeroes the shared weight too: "kept" then computes zeros there, and still must
    _, pruned = prune_exact(model, {"a": [2, 6]})
    assert weight(pruned, "a").shape == (6, 3, 3, 3)
    assert weight(pruned, "kept").shape == (8, 3, 3, 3)  # untouched
    assert node_by_name(pruned, "kept").input[1] == shared and node_by_name(pruned, "a").input[1] != shared
    assert _unused_initializers(pruned) == []


def node_by_name_in(g: GraphBuilder, name: str) -> onnx.NodeProto:
    return next(n for n in g.nodes if n.name == name)
