"""SVC model folder -> one compact, exact ONNX graph: preprocessed text in, label, decision value and probability out.

skl2onnx's SVC converter stores the support vectors dense (here ~12k x 22k floats, about 1.1 GB), so only its
TF-IDF front end is used: the Tokenizer and TfIdfVectorizer nodes that turn text into term counts. The rest is
written here with plain onnx helpers, because no converter does it: in float64 (a float32 sum over ~12k kernel
terms drifts by ~2e-3 and flips labels), touching only the non-zeros, never densifying anything of vocabulary
size beyond the counts:

    pairs    = the non-zero (row, term) counts of the batch (NonZero), ~7 per tweet
    x        = tf * idf on those pairs, divided by the row's L2 norm (sums by ScatterElements(reduction=add))
    postings = S transposed to CSR by term: for each term, the support vectors holding it and their values
    x.s_i    = every pair expanded into its term's postings (a ragged gather done with CumSum/ScatterElements/
               Range), products scatter-added into a [rows, n_sv] float64 matrix
    K        = exp(-gamma * (|x|^2 + |s|^2 - 2 x.s))                  (sklearn's own RBF expansion)
    d        = K @ dual_coef + intercept; label = d > 0; p = sigmoid(a d + b) (Platt, fitted on validation)

More than two classes (train/svc.py): D = K @ pair_coef + intercepts, one column per one-vs-one pair (i, j); each
pair's sign is a vote for i or j, summed by two 0/1 matmuls; label = the first class with the most votes (ArgMax
keeps the first maximum: libsvm's tie rule); p = softmax(D @ W^T + c), the calibration fitted on validation. All in
float64, outputs label [rows], decision [rows, pairs] and probability [rows, classes] (float64).

Per tweet the work is its terms' postings plus one exp per support vector, the same as libsvm's sparse kernel
needs at best; the file holds only S's non-zeros, the vocabulary and idf.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tsinfer.train.svc import SvcModel, pair_coefficients, vote_matrices

OPSET = 18
INPUT = "text"
OUTPUTS = ("label", "decision", "probability")
_OUTPUT_TYPES = {"binary": (TensorProto.INT64, TensorProto.DOUBLE, TensorProto.FLOAT),
                 "multiclass": (TensorProto.INT64, TensorProto.DOUBLE, TensorProto.DOUBLE)}


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


def _f64(*v) -> np.ndarray:
    return np.array(v, dtype=np.float64)


def _i64(*v) -> np.ndarray:
    return np.array(v, dtype=np.int64)


_node = helper.make_node


def _zeros(shape: str, out: str):
    return _node("ConstantOfShape", [shape], [out], value=numpy_helper.from_array(_f64(0.0)))


def _scatter_add(data: str, idx: str, upd: str, out: str):
    return _node("ScatterElements", [data, idx, upd], [out], axis=0, reduction="add")


def build_svc_onnx(model: SvcModel) -> onnx.ModelProto:
    onx = _tfidf_counts_graph(model)
    counts = onx.graph.output[0].name
    head = _multiclass_head() if model.multiclass else _binary_head()
    nodes = (_pair_nodes(counts, sublinear_tf=bool(model.params.get("sublinear_tf"))) + _tfidf_nodes()
             + _kernel_nodes() + head)
    return _finish(onx, nodes, _constants(model), multiclass=model.multiclass)


def _constants(model: SvcModel) -> dict:
    """The graph's initializers: idf, the support vectors as postings by term, the kernel and Platt parameters."""
    n_sv = model.support_vectors.shape[0]
    postings = model.support_vectors.T.tocsr()  # by term: which support vectors hold it, with what value
    postings.sort_indices()
    s = model.support_vectors
    platt_a, platt_b = model.platt
    if model.multiclass:
        first, second = vote_matrices(len(model.labels))
        coef, intercept = model.calibration
        head = {"pair_coef": pair_coefficients(model.dual_coef, model.n_support),
                "pair_intercept": model.intercepts.astype(np.float64),
                "vote_first": first, "vote_second": second, "calibration_coef_t": coef.T.copy(),
                "calibration_intercept": intercept.astype(np.float64)}
    else:
        head = {"dual_coef": model.dual_coef.astype(np.float64).reshape(-1, 1)}
    return {
        "idf": np.asarray(model.vectorizer.idf_, dtype=np.float64),
        "post_start": postings.indptr[:-1].astype(np.int64),
        "post_end": postings.indptr[1:].astype(np.int64),
        "post_sv": postings.indices.astype(np.int64),
        "post_value": postings.data.astype(np.float64),
        "sv_sq_norm": np.asarray(s.multiply(s).sum(axis=1), dtype=np.float64).reshape(1, -1),
        **head,
        "intercept": _f64(model.intercept), "neg_gamma": _f64(-model.gamma), "two": _f64(2.0), "one": _f64(1.0),
        "zero": _f64(0.0), "tiny": _f64(1e-300), "platt_a": _f64(platt_a), "platt_b": _f64(platt_b),
        "n_sv": _i64(n_sv), "i0": _i64(0), "i1": _i64(1), "row_axis": _i64(0), "flat": _i64(-1),
        "rows_by_sv": _i64(-1, n_sv),
        "s0": np.array(0, dtype=np.int64), "s1": np.array(1, dtype=np.int64),  # scalars: Gather drops the axis
    }


def _pair_nodes(counts: str, *, sublinear_tf: bool) -> list:
    """The non-zero (row, term) pairs of the count matrix, row-major, with their term frequency."""
    nodes = [
        _node("NonZero", [counts], ["nz"]),
        _node("Transpose", ["nz"], ["nz_pairs"], perm=[1, 0]),
        _node("Gather", ["nz", "s0"], ["pair_row"], axis=0),
        _node("Gather", ["nz", "s1"], ["pair_term"], axis=0),
        _node("GatherND", [counts, "nz_pairs"], ["pair_count32"]),
        _node("Cast", ["pair_count32"], ["pair_count"], to=TensorProto.DOUBLE),
        _node("Shape", [counts], ["counts_shape"]),
        _node("Slice", ["counts_shape", "i0", "i1"], ["n_rows"]),
        _zeros("n_rows", "row_zeros"),
    ]
    if sublinear_tf:  # 1 + log(tf), as sklearn does (only non-zero counts reach here)
        nodes += [_node("Log", ["pair_count"], ["log_tf"]), _node("Add", ["log_tf", "one"], ["pair_tf"])]
    else:
        nodes += [_node("Identity", ["pair_count"], ["pair_tf"])]
    return nodes


def _tfidf_nodes() -> list:
    """TF-IDF of every pair, divided by its row's L2 norm, and each row's squared norm."""
    return [
        # TF-IDF and the row's L2 norm (sklearn leaves an empty row at zero)
        _node("Gather", ["idf", "pair_term"], ["pair_idf"]),
        _node("Mul", ["pair_tf", "pair_idf"], ["pair_w"]),
        _node("Mul", ["pair_w", "pair_w"], ["pair_w2"]),
        _scatter_add("row_zeros", "pair_row", "pair_w2", "row_sq"),
        _node("Sqrt", ["row_sq"], ["row_norm"]),
        _node("Max", ["row_norm", "tiny"], ["row_norm_safe"]),
        _node("Gather", ["row_norm_safe", "pair_row"], ["pair_norm"]),
        _node("Div", ["pair_w", "pair_norm"], ["pair_x"]),
        _node("Mul", ["pair_x", "pair_x"], ["pair_x2"]),
        _scatter_add("row_zeros", "pair_row", "pair_x2", "x_sq"),
    ]


def _kernel_nodes() -> list:
    """x.s_i by expanding every pair into its term's postings, then the RBF kernel."""
    return [
        # expand every pair into the postings of its term: position p belongs to pair owner[p]
        _node("Gather", ["post_start", "pair_term"], ["pair_post_start"]),
        _node("Gather", ["post_end", "pair_term"], ["pair_post_end"]),
        _node("Sub", ["pair_post_end", "pair_post_start"], ["pair_len"]),
        _node("CumSum", ["pair_len", "row_axis"], ["pair_end"]),
        _node("Sub", ["pair_end", "pair_len"], ["pair_begin"]),
        _node("ReduceSum", ["pair_len"], ["total"], keepdims=1),
        _node("Add", ["total", "i1"], ["total1"]),
        _node("ConstantOfShape", ["total1"], ["marks0"], value=numpy_helper.from_array(_i64(0))),
        _node("Expand", ["i1", "pair_begin_shape"], ["ones"]),
        _node("Shape", ["pair_begin"], ["pair_begin_shape"]),
        _scatter_add("marks0", "pair_begin", "ones", "marks"),
        _node("CumSum", ["marks", "row_axis"], ["owner1"]),
        _node("Slice", ["owner1", "i0", "total"], ["owner1_cut"]),
        _node("Sub", ["owner1_cut", "i1"], ["owner"]),
        _node("Squeeze", ["total", "i0"], ["total_scalar"]),
        _node("Range", ["s0", "total_scalar", "s1"], ["position"]),
        _node("Gather", ["pair_begin", "owner"], ["owner_begin"]),
        _node("Sub", ["position", "owner_begin"], ["within"]),
        _node("Gather", ["pair_post_start", "owner"], ["owner_post_start"]),
        _node("Add", ["owner_post_start", "within"], ["post_index"]),
        _node("Gather", ["post_sv", "post_index"], ["hit_sv"]),
        _node("Gather", ["post_value", "post_index"], ["hit_value"]),
        _node("Gather", ["pair_x", "owner"], ["hit_x"]),
        _node("Mul", ["hit_x", "hit_value"], ["hit_product"]),
        _node("Gather", ["pair_row", "owner"], ["hit_row"]),
        _node("Mul", ["hit_row", "n_sv"], ["hit_row_base"]),
        _node("Add", ["hit_row_base", "hit_sv"], ["hit_cell"]),
        # x.s_i for every row and support vector, summed in float64
        _node("Mul", ["n_rows", "n_sv"], ["n_cells"]),
        _zeros("n_cells", "cell_zeros"),
        _scatter_add("cell_zeros", "hit_cell", "hit_product", "dots_flat"),
        _node("Reshape", ["dots_flat", "rows_by_sv"], ["dots"]),
        # K = exp(-gamma * (|x|^2 + |s|^2 - 2 x.s)), decision = K @ dual_coef + intercept
        _node("Unsqueeze", ["x_sq", "i1"], ["x_sq_col"]),
        _node("Add", ["x_sq_col", "sv_sq_norm"], ["sq_sum"]),
        _node("Mul", ["dots", "two"], ["two_dots"]),
        _node("Sub", ["sq_sum", "two_dots"], ["sq_dist_raw"]),
        _node("Max", ["sq_dist_raw", "zero"], ["sq_dist"]),
        _node("Mul", ["sq_dist", "neg_gamma"], ["exponent"]),
        _node("Exp", ["exponent"], ["kernel"]),
    ]


def _binary_head() -> list:
    """Two classes: decision = K @ dual_coef + intercept, its sign, and Platt's P(positive)."""
    return [
        _node("MatMul", ["kernel", "dual_coef"], ["weighted"]),
        _node("Add", ["weighted", "intercept"], ["decision_col"]),
        _node("Reshape", ["decision_col", "flat"], ["decision"]),
        _node("Greater", ["decision", "zero"], ["positive"]),
        _node("Cast", ["positive"], ["label"], to=TensorProto.INT64),
        _node("Mul", ["decision", "platt_a"], ["platt_lin0"]),
        _node("Add", ["platt_lin0", "platt_b"], ["platt_lin"]),
        _node("Sigmoid", ["platt_lin"], ["probability64"]),
        _node("Cast", ["probability64"], ["probability"], to=TensorProto.FLOAT),
    ]


def _multiclass_head() -> list:
    """More classes: the pairs' decisions, their votes, the first class with the most, the calibrated softmax."""
    return [
        _node("MatMul", ["kernel", "pair_coef"], ["pair_weighted"]),
        _node("Add", ["pair_weighted", "pair_intercept"], ["decision"]),
        _node("Greater", ["decision", "zero"], ["pair_won"]),
        _node("Cast", ["pair_won"], ["wins"], to=TensorProto.DOUBLE),
        _node("Sub", ["one", "wins"], ["losses"]),
        _node("MatMul", ["wins", "vote_first"], ["votes_first"]),
        _node("MatMul", ["losses", "vote_second"], ["votes_second"]),
        _node("Add", ["votes_first", "votes_second"], ["votes"]),
        _node("ArgMax", ["votes"], ["label"], axis=1, keepdims=0, select_last_index=0),
        _node("MatMul", ["decision", "calibration_coef_t"], ["calibration_lin0"]),
        _node("Add", ["calibration_lin0", "calibration_intercept"], ["calibration_lin"]),
        _node("Softmax", ["calibration_lin"], ["probability"], axis=1),
    ]


def _finish(onx: onnx.ModelProto, nodes: list, consts: dict, *, multiclass: bool = False) -> onnx.ModelProto:
    """The nodes after skl2onnx's front end, the initializers they use, the three outputs; checked."""
    # ONNX wants producers before consumers
    shape_node = next(x for x in nodes if x.output == ["pair_begin_shape"])
    nodes.remove(shape_node)
    nodes.insert(next(i for i, x in enumerate(nodes) if x.output == ["ones"]), shape_node)
    onx.graph.node.extend(nodes)
    used = {i for node in nodes for i in node.input}
    onx.graph.initializer.extend(numpy_helper.from_array(v, name=k) for k, v in consts.items()
                                 if k in used and isinstance(v, np.ndarray))
    del onx.graph.output[:]
    types = _OUTPUT_TYPES["multiclass" if multiclass else "binary"]
    shapes = ([None], [None, None], [None, None]) if multiclass else ([None], [None], [None])
    onx.graph.output.extend(helper.make_tensor_value_info(name, kind, shape)
                            for name, kind, shape in zip(OUTPUTS, types, shapes))
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
