"""Packages imported with their ``__init__`` deferred (``nomic_memory.model.deferred``): submodules
import without it, the first name it defines runs it once in the same object; ``torch._dynamo``'s
decorators applied before it ran do what Dynamo's own do once it has.  Each check runs in a fresh
interpreter: deferring changes ``sys.modules`` for the rest of a process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import cli_env


def _python(code: str, path: str | None = None) -> dict:
    env = cli_env()
    if path:
        env["PYTHONPATH"] = path + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.fixture
def package(tmp_path):
    """A package ``pkg`` whose ``__init__`` counts its runs and imports one of its submodules."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import os\nos.environ['PKG_INITS'] = str(int(os.environ.get('PKG_INITS', '0')) + 1)\n"
        "from . import heavy\nVALUE = heavy.X + 1\n"
        "import pkg\ntry:\n    pkg.LATER\n    EARLY = 'seen'\nexcept AttributeError as e:\n    EARLY = str(e)\nLATER = 1\n"
    )
    (pkg / "heavy.py").write_text("X = 41\n")
    (pkg / "light.py").write_text("from pkg import sibling\nY = sibling.Z\n")
    (pkg / "sibling.py").write_text("Z = 'z'\n")
    return tmp_path


def test_submodules_import_without_the_init_which_runs_once_on_first_use(package):
    got = _python(
        """
        import json, os, sys
        from nomic_memory.model.deferred import DeferredPackage, defer
        pkg = defer("pkg")
        import pkg.light
        from pkg import sibling
        before = {"inits": os.environ.get("PKG_INITS", "0"), "heavy": "pkg.heavy" in sys.modules,
                  "deferred": isinstance(sys.modules["pkg"], DeferredPackage), "y": pkg.light.Y}
        value = pkg.VALUE
        import pkg as again
        print(json.dumps({"before": before, "value": value, "again": again.VALUE, "inits": os.environ["PKG_INITS"],
            "same": again is pkg and sys.modules["pkg"] is pkg, "deferred": isinstance(pkg, DeferredPackage),
            "twice": defer("pkg") is None, "missing": defer("no_such_package_here") is None}))
        """,
        str(package),
    )
    assert got["before"] == {"inits": "0", "heavy": False, "deferred": True, "y": "z"}
    assert got["value"] == 42 and got["again"] == 42 and got["inits"] == "1"
    assert got["same"] and not got["deferred"] and got["twice"] and got["missing"]


def test_a_missing_name_still_fails_after_the_init(package):
    got = _python(
        """
        import json
        from nomic_memory.model.deferred import defer
        pkg = defer("pkg")
        try:
            pkg.nothing_like_this
            err = None
        except AttributeError as e:
            err = str(e)
        print(json.dumps({"err": err, "value": pkg.VALUE, "early": pkg.EARLY}))
        """,
        str(package),
    )
    assert "nothing_like_this" in got["err"] and got["value"] == 42
    assert got["early"].startswith("partially initialized module 'pkg' has no attribute 'LATER'")  # as Python's own


@pytest.mark.slow
def test_dynamo_decorators_applied_before_dynamo_ran_act_as_its_own():
    """Decorated while ``torch._dynamo`` is deferred: nothing imports Dynamo, the functions run;
    then under ``torch.compile`` (which runs it) a disabled function stays out of the graph, as
    one disabled after; a function allowed in the graph is registered; a constant is marked."""
    got = _python(
        """
        import json, sys, torch
        from nomic_memory.model.deferred import defer_dynamo
        defer_dynamo()

        @torch.compiler.disable
        def early(x):
            return torch.sin(x)

        @torch.compiler.disable(recursive=False)
        def early_nonrecursive(x):
            return torch.tan(x)

        def allowed(x):
            return x + 1

        torch.compiler.allow_in_graph(allowed)

        @torch._dynamo.assume_constant_result
        def constant():
            return 3

        x = torch.ones(3)
        eager = [early(x).tolist(), early_nonrecursive(x).tolist(), constant()]
        ran_before = "torch._dynamo.convert_frame" in sys.modules
        torch._dynamo.reset()  # a name of Dynamo's own: its __init__ runs now

        @torch.compiler.disable  # Dynamo's own disable
        def late(x):
            return torch.sinh(x)

        graphs = []

        def backend(gm, example_inputs):
            graphs.append(sorted(str(n.target) for n in gm.graph.nodes if n.op == "call_function"))
            return gm.forward

        @torch.compile(backend=backend)
        def outer(x):
            return torch.cos(early(x)) + torch.exp(late(x)) + torch.abs(early_nonrecursive(x))

        compiled = outer(x)
        ops = sorted({op for g in graphs for op in g})
        from torch._dynamo import trace_rules
        print(json.dumps({"eager": eager, "ran_before": ran_before, "ops": ops,
            "same": torch.allclose(compiled, torch.cos(torch.sin(x)) + torch.exp(torch.sinh(x)) + torch.abs(torch.tan(x))),
            "allowed": trace_rules.is_callable_allowed(allowed), "constant": getattr(constant, "_dynamo_marked_constant", None)}))
        """
    )
    assert got["eager"][2] == 3 and not got["ran_before"]
    assert got["same"] and got["allowed"] and got["constant"] is True

    def traced(name: str) -> bool:  # torch.cos's node target prints as "<built-in method cos of ...>"
        return any(f"method {name} of" in op for op in got["ops"])

    assert all(traced(op) for op in ("cos", "exp", "abs")), got["ops"]
    assert not any(traced(op) for op in ("sin", "sinh", "tan")), got[
        "ops"
    ]  # run outside, as Dynamo's disable makes them
