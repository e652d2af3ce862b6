"""The demo's two notebooks (examples/notebooks/), executed end to end on the fixture models so
that they never rot: generate an image, then describe it."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "examples" / "notebooks"
FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("notebooks")


@pytest.fixture(autouse=True)
def fixture_models(monkeypatch):
    monkeypatch.setenv("CLIPSTEER_SD", str(FIXTURES / "sd-tiny"))
    monkeypatch.setenv("CLIPSTEER_SIZE", "64")
    monkeypatch.setenv("CLIPSTEER_STEPS", "3")
    monkeypatch.setenv("CLIPSTEER_LM", str(FIXTURES / "gpt2-tiny"))
    monkeypatch.setenv("CLIPSTEER_CLIP", str(FIXTURES / "clip-tiny-gelu"))
    monkeypatch.delenv("CLIPSTEER_IMAGE", raising=False)


def execute(name, workdir):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    return notebook


def outputs(notebook):
    return [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]


def test_generate_then_describe(workdir):
    generated = execute("generate.ipynb", workdir)
    assert (workdir / "generated.png").is_file()
    assert any("image/png" in o.get("data", {}) for o in outputs(generated))
    described = execute("describe.ipynb", workdir)
    shown = [o for o in outputs(described) if "text/html" in o.get("data", {})]
    assert shown, "show() displayed nothing"
    # The live display was updated to the finished description.
    html = "".join(o["data"]["text/html"] for o in shown)
    assert "done · similarity" in html
