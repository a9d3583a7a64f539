"""Per-token int8 activations: one row, one answer for the CPU's int8 BERT.

onnxruntime's dynamic quantizer (quantize_dynamic) quantizes each MatMul's input with one scale and zero point per
tensor, that is per batch: a row's int8 codes, and so its score, depended on the other rows of its batch (on
test.tsv 258-299 predictions changed between batch plans). Its int8 weights (per channel) are kept; the activation
side is rewritten so that every token (row of the [..., hidden] input) has its own scale:

    s = max(|x| over the row) / 127                       Abs, ReduceMax, Mul, Max (a guard for all-zero rows)
    q = saturate(round(x / s) + 128) as uint8             per-axis QuantizeLinear on the [tokens, hidden] view
    y = MatMulIntegerToFloat(q, Wq, s, w_scale, 128, w_zp)   (com.microsoft; the bias stays in the Add after it)

Written by hand because neither onnxruntime.quantization nor the runtime has a per-token dynamic mode. The CPU
MatMulIntegerToFloat kernel accepts a per-row a_scale (it rescales after its u8s8 GEMM, MLAS's VNNI/AMX path), but
it would scale a bias given to it too, so none is. Each output row then depends on its own input row alone.
"""
from __future__ import annotations

import numpy as np

MS = "com.microsoft"


def per_token_activations(model) -> dict:
    """Rewrite a quantize_dynamic graph in place: each DynamicQuantizeLinear becomes per-token quantization and
    each MatMulInteger + Cast + Mul(scales) it feeds one MatMulIntegerToFloat; returns what was rewritten."""
    from onnx import helper

    graph = model.graph
    consts = _Constants(graph)
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    drop, new, matmuls = set(), [], 0
    quantizers = [n for n in graph.node if n.op_type == "DynamicQuantizeLinear"]
    for dql in quantizers:
        x, (xq, xs, xzp) = dql.input[0], dql.output
        users = consumers[xq]
        hidden = int(consts.initializer(users[0].input[1]).dims[0])
        scale, nodes = _per_token_quantize(x, xq, hidden, consts)
        new += nodes
        drop.add(id(dql))
        for mm in users:
            cast = _only(consumers[mm.output[0]], "Cast")
            mul = _only(consumers[cast.output[0]], "Mul")
            scales = producer[next(i for i in mul.input if i != cast.output[0])]  # Mul(xs, w_scale)
            if mm.op_type != "MatMulInteger" or mm.input[2] != xzp or scales.op_type != "Mul" or xs not in scales.input:
                raise ValueError(f"unexpected quantized MatMul pattern at {mm.name}")
            w_scale = next(i for i in scales.input if i != xs)
            new.append(helper.make_node("MatMulIntegerToFloat", [xq, mm.input[1], scale, w_scale, consts.zero_point,
                                                                 mm.input[3]], [mul.output[0]],
                                        name=mm.name + "_per_token", domain=MS))
            drop.update({id(mm), id(cast), id(mul), id(scales)})
            matmuls += 1
    kept = [n for n in graph.node if id(n) not in drop]
    del graph.node[:]
    graph.node.extend(_topological(kept + new, graph))
    del graph.value_info[:]  # shapes of removed tensors
    return {"quantizers": len(quantizers), "matmuls": matmuls}


class _Constants:
    """The initializers the rewrite adds once and shares."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph, self._numpy_helper = graph, numpy_helper
        self._by_name = {t.name: t for t in graph.initializer}
        self.inv127 = self.add("per_token_inv127", np.array(1.0 / 127.0, np.float32))
        self.tiny = self.add("per_token_tiny", np.array(1e-30, np.float32))
        self.zero_point = self.add("per_token_zero_point", np.array(128, np.uint8))
        self.flat = self.add("per_token_flat", np.array([-1], np.int64))

    def add(self, name: str, array: np.ndarray) -> str:
        tensor = self._numpy_helper.from_array(np.asarray(array), name)
        self.graph.initializer.append(tensor)
        self._by_name[name] = tensor
        return name

    def initializer(self, name: str):
        return self._by_name[name]


def _per_token_quantize(x: str, xq: str, hidden: int, consts: _Constants) -> tuple[str, list]:
    """Nodes computing xq (uint8, zero point 128) from x with one scale per token; returns (scale, nodes)."""
    from onnx import helper

    p = x.replace("/", "_") + "_per_token"
    shape2d = consts.add(p + "_2d", np.array([-1, hidden], np.int64))
    node = helper.make_node
    nodes = [
        node("Abs", [x], [p + "_abs"], name=p + "_Abs"),
        node("ReduceMax", [p + "_abs"], [p + "_max"], name=p + "_ReduceMax", axes=[-1], keepdims=1),
        node("Mul", [p + "_max", consts.inv127], [p + "_s0"], name=p + "_Scale"),
        node("Max", [p + "_s0", consts.tiny], [p + "_s"], name=p + "_Guard"),
        # per-axis QuantizeLinear on [tokens, hidden], axis 0: one pass, each row with its own scale; its zero
        # point must have the scale's shape, hence 128 expanded to [tokens]
        node("Reshape", [x, shape2d], [p + "_x2"], name=p + "_Reshape2d"),
        node("Reshape", [p + "_s", consts.flat], [p + "_s1"], name=p + "_ReshapeScale"),
        node("Shape", [p + "_s1"], [p + "_n"], name=p + "_Tokens"),
        node("Expand", [consts.zero_point, p + "_n"], [p + "_zp"], name=p + "_ZeroPoints"),
        node("QuantizeLinear", [p + "_x2", p + "_s1", p + "_zp"], [p + "_q2"], name=p + "_Quantize", axis=0),
        node("Shape", [x], [p + "_shape"], name=p + "_ShapeX"),
        node("Reshape", [p + "_q2", p + "_shape"], [xq], name=p + "_ReshapeBack"),
    ]
    return p + "_s", nodes


def _only(nodes: list, op_type: str):
    if len(nodes) != 1 or nodes[0].op_type != op_type:
        raise ValueError(f"unexpected quantized MatMul pattern: expected one {op_type}")
    return nodes[0]


def _topological(nodes: list, graph) -> list:
    """The nodes in an order where each comes after the producers of its inputs (ONNX requires it)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    out: list = []
    while nodes:
        rest = []
        for n in nodes:
            if all(i in ready for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(nodes):
            raise ValueError(f"the rewritten graph has a node whose input nobody produces: {rest[0].name}")
        nodes = rest
    return out
