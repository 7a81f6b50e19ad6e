"""The type stubs (_native.pyi) and the docstrings describe what the module really has."""

import ast
from pathlib import Path

import secure_serving as ss
from secure_serving import _native

STUB = Path(__file__).resolve().parents[1] / "package" / "secure_serving" / "_native.pyi"


def stub_names():
    """{top-level name: set of its public members} as the stub declares them."""
    tree = ast.parse(STUB.read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out[node.name] = {
                n.name for n in node.body
                if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")
            } | {
                n.target.id for n in node.body
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            }
        elif isinstance(node, ast.FunctionDef):
            out[node.name] = set()
    return out


def test_stub_matches_the_module():
    declared = stub_names()
    public = {n for n in dir(_native) if not n.startswith("_")}
    assert set(declared) == public
    for name, members in declared.items():
        obj = getattr(_native, name)
        real = {m for m in dir(obj) if not m.startswith("_")}
        if isinstance(obj, type) and issubclass(obj, BaseException):
            continue
        assert members <= real, f"{name}: stub declares {sorted(members - real)}"
        if isinstance(obj, type):
            assert real - set(dir(object)) <= members, f"{name}: stub lacks {sorted(real - members)}"


def test_every_public_name_has_a_docstring():
    for name in ss.__all__:
        obj = getattr(ss, name)
        if name == "__version__":
            continue
        assert (obj.__doc__ or "").strip(), name
        if isinstance(obj, type) and not issubclass(obj, BaseException):
            for m in dir(obj):
                if not m.startswith("_"):
                    assert (getattr(obj, m).__doc__ or "").strip(), f"{name}.{m}"
