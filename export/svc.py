"""SVC model folder -> one compact, exact ONNX graph: preprocessed text in, label, decision value and probability out.

skl2onnx's SVC converter stores the support vectors dense (here ~12k x 22k floats, about 1.1 GB), so only its
TF-IDF front end is used: the Tokenizer and TfIdfVectorizer nodes that turn text into term counts. The rest is
written here with plain onnx helpers, in float64 (a float32 sum over ~12k kernel terms drifts by ~2e-3 and flips
labels), without ever densifying the support vectors:

    x      = L2-normalised (tf * idf) of the row, from the counts
    x.s_i  = sum over the stored non-zeros (i, t, v) of S of x[t] * v
             -> Gather x at the non-zeros' term columns, multiply by their values, and sum each support vector's
                run with CumSum: S is CSR, so each run is contiguous and x.s_i = C[end_i] - C[start_i]
    K_i    = exp(-gamma * (|x|^2 + |s_i|^2 - 2 x.s_i))             (sklearn's own RBF expansion)
    d      = K @ dual_coef + intercept; label = d > 0; p = sigmoid(a d + b) (Platt, fitted on validation)

The work is one pass over S's non-zeros per row, the same order as libsvm's sparse kernel, and the file holds
only S's non-zeros, the vocabulary and idf.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tsinfer.train.svc import SvcModel

OPSET = 18
INPUT = "text"
OUTPUTS = ("label", "decision", "probability")


def _tfidf_counts_graph(model: SvcModel) -> onnx.ModelProto:
    """skl2onnx's TfidfVectorizer graph, cut where it yields raw term counts (mode TF, before idf and norm)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import StringTensorType

    vec = model.vectorizer
    onx = convert_sklearn(vec, "tfidf", [(INPUT, StringTensorType([None, 1]))], target_opset=OPSET,
                          options={id(vec): {"tokenexp": r"\S+"}})
    nodes = list(onx.graph.node)
    cut = next(i for i, n in enumerate(nodes) if n.op_type == "TfIdfVectorizer")
    tfidf_node = nodes[cut]
    mode = next(helper.get_attribute_value(a) for a in tfidf_node.attribute if a.name == "mode")
    if mode != b"TF":
        raise RuntimeError(f"unexpected TfIdfVectorizer mode {mode!r} from skl2onnx: expected raw counts (TF)")
    if any(n.op_type == "StringNormalizer" for n in nodes[:cut]):
        raise RuntimeError("skl2onnx added a StringNormalizer (needs a locale in onnxruntime): the vectorizer "
                           "must be built with lowercase=False")
    del onx.graph.node[cut + 1:]
    kept_inputs = {i for n in onx.graph.node for i in n.input}
    kept = [init for init in onx.graph.initializer if init.name in kept_inputs]
    del onx.graph.initializer[:]
    onx.graph.initializer.extend(kept)
    del onx.graph.output[:]
    onx.graph.output.append(helper.make_tensor_value_info(tfidf_node.output[0], TensorProto.FLOAT, [None, None]))
    return onx


def build_svc_onnx(model: SvcModel) -> onnx.ModelProto:
    onx = _tfidf_counts_graph(model)
    counts = onx.graph.output[0].name
    s = model.support_vectors.tocsr()
    s.sort_indices()
    s_sq = np.asarray(s.multiply(s).sum(axis=1)).ravel()
    platt_a, platt_b = model.platt
    consts = {
        "idf": np.asarray(model.vectorizer.idf_, dtype=np.float64),
        "sv_terms": s.indices.astype(np.int64),
        "sv_values": s.data.astype(np.float64).reshape(-1, 1),
        "run_end": s.indptr[1:].astype(np.int64),     # into the cumulative sum padded with a leading 0
        "run_start": s.indptr[:-1].astype(np.int64),
        "sv_sq_norm": s_sq.astype(np.float64).reshape(-1, 1),
        "dual_coef": model.dual_coef.astype(np.float64).reshape(1, -1),
        "intercept": np.array([model.intercept], dtype=np.float64),
        "neg_gamma": np.array([-model.gamma], dtype=np.float64),
        "two": np.array([2.0], dtype=np.float64),
        "one": np.array([1.0], dtype=np.float64),
        "zero": np.array([0.0], dtype=np.float64),
        "tiny": np.array([1e-300], dtype=np.float64),
        "platt_a": np.array([platt_a], dtype=np.float64),
        "platt_b": np.array([platt_b], dtype=np.float64),
        "axis0": np.array([0], dtype=np.int64),
        "axis1": np.array([1], dtype=np.int64),
        "pad_front": np.array([1, 0, 0, 0], dtype=np.int64),
        "flat": np.array([-1], dtype=np.int64),
    }
    n = helper.make_node
    tf = "tf64"
    nodes = [n("Cast", [counts], ["counts64"], to=TensorProto.DOUBLE)]
    if model.params.get("sublinear_tf"):  # 1 + log(tf) where tf > 0, as sklearn does
        nodes += [n("Greater", ["counts64", "zero"], ["present"]),
                  n("Max", ["counts64", "one"], ["counts_safe"]),
                  n("Log", ["counts_safe"], ["log_tf"]),
                  n("Add", ["log_tf", "one"], ["log_tf1"]),
                  n("Where", ["present", "log_tf1", "zero"], [tf])]
    else:
        nodes += [n("Identity", ["counts64"], [tf])]
    nodes += [
        n("Mul", [tf, "idf"], ["tfidf"]),
        n("ReduceSumSquare", ["tfidf", "axis1"], ["row_sq"], keepdims=1),
        # sklearn's normalize leaves an all-zero row at zero: divide by max(norm, tiny)
        n("Sqrt", ["row_sq"], ["row_norm"]),
        n("Max", ["row_norm", "tiny"], ["row_norm_safe"]),
        n("Div", ["tfidf", "row_norm_safe"], ["x"]),
        n("ReduceSumSquare", ["x", "axis1"], ["x_sq"], keepdims=1),
        # Work on x transposed ([terms, rows]) so that each gather/cumsum step moves whole contiguous rows.
        n("Transpose", ["x"], ["x_t"], perm=[1, 0]),
        n("Gather", ["x_t", "sv_terms"], ["x_at_sv"], axis=0),
        n("Mul", ["x_at_sv", "sv_values"], ["products"]),
        n("CumSum", ["products", "axis0"], ["running"]),
        n("Pad", ["running", "pad_front"], ["running0"]),
        n("Gather", ["running0", "run_end"], ["c_end"], axis=0),
        n("Gather", ["running0", "run_start"], ["c_start"], axis=0),
        n("Sub", ["c_end", "c_start"], ["dots"]),                     # [n_sv, rows]
        n("Transpose", ["x_sq"], ["x_sq_t"], perm=[1, 0]),            # [1, rows]
        n("Add", ["x_sq_t", "sv_sq_norm"], ["sq_sum"]),
        n("Mul", ["dots", "two"], ["two_dots"]),
        n("Sub", ["sq_sum", "two_dots"], ["sq_dist_raw"]),
        n("Max", ["sq_dist_raw", "zero"], ["sq_dist"]),
        n("Mul", ["sq_dist", "neg_gamma"], ["exponent"]),
        n("Exp", ["exponent"], ["kernel"]),
        n("MatMul", ["dual_coef", "kernel"], ["weighted"]),          # [1, rows]
        n("Add", ["weighted", "intercept"], ["decision_row"]),
        n("Reshape", ["decision_row", "flat"], ["decision"]),
        n("Greater", ["decision", "zero"], ["positive"]),
        n("Cast", ["positive"], ["label"], to=TensorProto.INT64),
        n("Mul", ["decision", "platt_a"], ["platt_lin0"]),
        n("Add", ["platt_lin0", "platt_b"], ["platt_lin"]),
        n("Sigmoid", ["platt_lin"], ["probability64"]),
        n("Cast", ["probability64"], ["probability"], to=TensorProto.FLOAT),
    ]
    onx.graph.node.extend(nodes)
    used = {i for node in nodes for i in node.input}
    onx.graph.initializer.extend(numpy_helper.from_array(v, name=k) for k, v in consts.items() if k in used)
    del onx.graph.output[:]
    onx.graph.output.extend([
        helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
        helper.make_tensor_value_info("decision", TensorProto.DOUBLE, [None]),
        helper.make_tensor_value_info("probability", TensorProto.FLOAT, [None]),
    ])
    onx.graph.name = "tsinfer_tfidf_rbf_svc"
    for opset in onx.opset_import:  # skl2onnx declares the lowest opset its own nodes need
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, OPSET)
    onnx.checker.check_model(onx)
    return onx


def dense_svc_bytes(model: SvcModel) -> int:
    """What skl2onnx's SVMClassifier would store: every support vector dense, as float32."""
    n_sv, n_terms = model.support_vectors.shape
    return n_sv * n_terms * 4
