"""The README's "From Python" snippets run as shown, against the test models (linked where the README names them)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def python_snippets(section: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_the_from_python_snippets_run(all_artifacts, small_data, tmp_path, monkeypatch, capsys):
    snippets = python_snippets("From Python")
    assert len(snippets) >= 2
    (tmp_path / "artifacts").symlink_to(all_artifacts)
    (tmp_path / "data").symlink_to(small_data)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for k, code in enumerate(snippets):
        exec(compile(code, f"README.md (From Python, snippet {k + 1})", "exec"), namespace)
    out = capsys.readouterr().out
    assert "300 0 " in out and "model folder not found: no/such/folder" in out
    assert list(namespace["df"].columns) == ["id", "text", "pred", "score"]
    assert (tmp_path / "predictions.tsv").exists() and (tmp_path / "metrics.json").exists()
