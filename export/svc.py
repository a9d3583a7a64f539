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

Per tweet the work is its terms' postings plus one exp per support vector, the same as libsvm's sparse kernel
needs at best; the file holds only S's non-zeros, the vocabulary and idf.
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
    n_sv = model.support_vectors.shape[0]
    postings = model.support_vectors.T.tocsr()  # by term: which support vectors hold it, with what value
    postings.sort_indices()
    s = model.support_vectors
    platt_a, platt_b = model.platt
    f64 = lambda *v: np.array(v, dtype=np.float64)  # noqa: E731
    i64 = lambda *v: np.array(v, dtype=np.int64)  # noqa: E731
    consts = {
        "idf": np.asarray(model.vectorizer.idf_, dtype=np.float64),
        "post_start": postings.indptr[:-1].astype(np.int64),
        "post_end": postings.indptr[1:].astype(np.int64),
        "post_sv": postings.indices.astype(np.int64),
        "post_value": postings.data.astype(np.float64),
        "sv_sq_norm": np.asarray(s.multiply(s).sum(axis=1), dtype=np.float64).reshape(1, -1),
        "dual_coef": model.dual_coef.astype(np.float64).reshape(-1, 1),
        "intercept": f64(model.intercept), "neg_gamma": f64(-model.gamma), "two": f64(2.0), "one": f64(1.0),
        "zero": f64(0.0), "tiny": f64(1e-300), "platt_a": f64(platt_a), "platt_b": f64(platt_b),
        "n_sv": i64(n_sv), "i0": i64(0), "i1": i64(1), "row_axis": i64(0), "flat": i64(-1),
        "rows_by_sv": i64(-1, n_sv),
        "s0": np.array(0, dtype=np.int64), "s1": np.array(1, dtype=np.int64),  # scalars: Gather drops the axis
    }
    n = helper.make_node
    zeros = lambda shape, out: n("ConstantOfShape", [shape], [out], value=numpy_helper.from_array(f64(0.0)))  # noqa
    scatter_add = lambda data, idx, upd, out: n("ScatterElements", [data, idx, upd], [out], axis=0,  # noqa: E731
                                                reduction="add")
    nodes = [
        # the non-zero (row, term) pairs of the count matrix, row-major
        n("NonZero", [counts], ["nz"]),
        n("Transpose", ["nz"], ["nz_pairs"], perm=[1, 0]),
        n("Gather", ["nz", "s0"], ["pair_row"], axis=0),
        n("Gather", ["nz", "s1"], ["pair_term"], axis=0),
        n("GatherND", [counts, "nz_pairs"], ["pair_count32"]),
        n("Cast", ["pair_count32"], ["pair_count"], to=TensorProto.DOUBLE),
        n("Shape", [counts], ["counts_shape"]),
        n("Slice", ["counts_shape", "i0", "i1"], ["n_rows"]),
        zeros("n_rows", "row_zeros"),
    ]
    if model.params.get("sublinear_tf"):  # 1 + log(tf), as sklearn does (only non-zero counts reach here)
        nodes += [n("Log", ["pair_count"], ["log_tf"]), n("Add", ["log_tf", "one"], ["pair_tf"])]
    else:
        nodes += [n("Identity", ["pair_count"], ["pair_tf"])]
    nodes += [
        # TF-IDF and the row's L2 norm (sklearn leaves an empty row at zero)
        n("Gather", ["idf", "pair_term"], ["pair_idf"]),
        n("Mul", ["pair_tf", "pair_idf"], ["pair_w"]),
        n("Mul", ["pair_w", "pair_w"], ["pair_w2"]),
        scatter_add("row_zeros", "pair_row", "pair_w2", "row_sq"),
        n("Sqrt", ["row_sq"], ["row_norm"]),
        n("Max", ["row_norm", "tiny"], ["row_norm_safe"]),
        n("Gather", ["row_norm_safe", "pair_row"], ["pair_norm"]),
        n("Div", ["pair_w", "pair_norm"], ["pair_x"]),
        n("Mul", ["pair_x", "pair_x"], ["pair_x2"]),
        scatter_add("row_zeros", "pair_row", "pair_x2", "x_sq"),
        # expand every pair into the postings of its term: position p belongs to pair owner[p]
        n("Gather", ["post_start", "pair_term"], ["pair_post_start"]),
        n("Gather", ["post_end", "pair_term"], ["pair_post_end"]),
        n("Sub", ["pair_post_end", "pair_post_start"], ["pair_len"]),
        n("CumSum", ["pair_len", "row_axis"], ["pair_end"]),
        n("Sub", ["pair_end", "pair_len"], ["pair_begin"]),
        n("ReduceSum", ["pair_len"], ["total"], keepdims=1),
        n("Add", ["total", "i1"], ["total1"]),
        n("ConstantOfShape", ["total1"], ["marks0"], value=numpy_helper.from_array(i64(0))),
        n("Expand", ["i1", "pair_begin_shape"], ["ones"]),
        n("Shape", ["pair_begin"], ["pair_begin_shape"]),
        scatter_add("marks0", "pair_begin", "ones", "marks"),
        n("CumSum", ["marks", "row_axis"], ["owner1"]),
        n("Slice", ["owner1", "i0", "total"], ["owner1_cut"]),
        n("Sub", ["owner1_cut", "i1"], ["owner"]),
        n("Squeeze", ["total", "i0"], ["total_scalar"]),
        n("Range", ["s0", "total_scalar", "s1"], ["position"]),
        n("Gather", ["pair_begin", "owner"], ["owner_begin"]),
        n("Sub", ["position", "owner_begin"], ["within"]),
        n("Gather", ["pair_post_start", "owner"], ["owner_post_start"]),
        n("Add", ["owner_post_start", "within"], ["post_index"]),
        n("Gather", ["post_sv", "post_index"], ["hit_sv"]),
        n("Gather", ["post_value", "post_index"], ["hit_value"]),
        n("Gather", ["pair_x", "owner"], ["hit_x"]),
        n("Mul", ["hit_x", "hit_value"], ["hit_product"]),
        n("Gather", ["pair_row", "owner"], ["hit_row"]),
        n("Mul", ["hit_row", "n_sv"], ["hit_row_base"]),
        n("Add", ["hit_row_base", "hit_sv"], ["hit_cell"]),
        # x.s_i for every row and support vector, summed in float64
        n("Mul", ["n_rows", "n_sv"], ["n_cells"]),
        zeros("n_cells", "cell_zeros"),
        scatter_add("cell_zeros", "hit_cell", "hit_product", "dots_flat"),
        n("Reshape", ["dots_flat", "rows_by_sv"], ["dots"]),
        # K = exp(-gamma * (|x|^2 + |s|^2 - 2 x.s)), decision = K @ dual_coef + intercept
        n("Unsqueeze", ["x_sq", "i1"], ["x_sq_col"]),
        n("Add", ["x_sq_col", "sv_sq_norm"], ["sq_sum"]),
        n("Mul", ["dots", "two"], ["two_dots"]),
        n("Sub", ["sq_sum", "two_dots"], ["sq_dist_raw"]),
        n("Max", ["sq_dist_raw", "zero"], ["sq_dist"]),
        n("Mul", ["sq_dist", "neg_gamma"], ["exponent"]),
        n("Exp", ["exponent"], ["kernel"]),
        n("MatMul", ["kernel", "dual_coef"], ["weighted"]),
        n("Add", ["weighted", "intercept"], ["decision_col"]),
        n("Reshape", ["decision_col", "flat"], ["decision"]),
        n("Greater", ["decision", "zero"], ["positive"]),
        n("Cast", ["positive"], ["label"], to=TensorProto.INT64),
        n("Mul", ["decision", "platt_a"], ["platt_lin0"]),
        n("Add", ["platt_lin0", "platt_b"], ["platt_lin"]),
        n("Sigmoid", ["platt_lin"], ["probability64"]),
        n("Cast", ["probability64"], ["probability"], to=TensorProto.FLOAT),
    ]
    # ONNX wants producers before consumers
    shape_node = next(x for x in nodes if x.output == ["pair_begin_shape"])
    nodes.remove(shape_node)
    nodes.insert(next(i for i, x in enumerate(nodes) if x.output == ["ones"]), shape_node)
    onx.graph.node.extend(nodes)
    used = {i for node in nodes for i in node.input}
    onx.graph.initializer.extend(numpy_helper.from_array(v, name=k) for k, v in consts.items()
                                 if k in used and isinstance(v, np.ndarray))
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
