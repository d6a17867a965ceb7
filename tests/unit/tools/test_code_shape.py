"""The code's shape (tools/code_shape.py): no import circles in tts_runner/, and the reader that says
so finds a circle when there is one, however the import is written."""

from pathlib import Path

from tts_runner.tools import code_shape


def test_tts_runner_has_no_import_circles():
    graph = code_shape.import_graph()
    assert "tts_runner.serving.scheduler" in graph and "tts_runner.engines.loop" in graph["tts_runner.serving.scheduler"]
    assert code_shape.circles(graph) == []


def package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_circle_is_found_wherever_its_imports_are_written(tmp_path):
    pkg = package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b import thing\n",
        "b.py": "def thing():\n    from pkg import c\n    return c\n",  # inside a function
        "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n",  # relative, typing only
        "d.py": "import pkg.a\n",  # imports into the circle, is not part of it
    })
    assert code_shape.circles(code_shape.import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_the_shape_names_the_longest_function_and_the_most_parameters(tmp_path):
    pkg = package(tmp_path, {"__init__.py": "", "m.py": "class K:\n    def f(self, a, b, *c, d=1, **e):\n        x = 1\n"
                                                         "        return x\n\ndef g():\n    pass\n"})
    figures = code_shape.shape(pkg)
    assert figures["modules"] == 2 and figures["import_circles"] == []
    assert figures["longest_functions"][0] == {"name": "pkg.m:K.f", "lines": 3, "parameters": 5}
    assert figures["most_parameters"][0]["name"] == "pkg.m:K.f"


def test_a_long_chain_is_read_without_recursion():
    """Reading the graph leaves the interpreter as it found it (a raised recursion limit leaked into
    the tests that ran after it: the HTTP fuzz test's client then sent bodies its server could not parse)."""
    import sys

    limit = sys.getrecursionlimit()
    chain = {f"m{i:05d}": {f"m{i + 1:05d}"} for i in range(5000)}
    chain["m05000"] = {"m00000"}
    assert code_shape.circles(chain) == [sorted(chain)]
    assert sys.getrecursionlimit() == limit
