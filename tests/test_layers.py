"""The package's import graph has no cycle and points down the layers; sslkd modules import each
other at the top of the file (an import hidden in a function is how a cycle hides). Imports by
name count too: ``lazy_import("sslkd.x")`` and ``importlib.import_module("sslkd.x")`` (an f-string
``"sslkd.commands.{name}"`` imports every module under its constant prefix)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "sslkd"

# lower layers first; a module may import its own layer or those before it (tested below). The root
# package "sslkd" names itself only (its API is sslkd.api's, loaded on first use); a prefix names a
# module and everything under it.
LAYERS = [
    ["sslkd.errors", "sslkd.schema", "sslkd.lazy", "sslkd.device", "sslkd.distributed", "sslkd.checkpoint"],
    ["sslkd.schedules"],
    ["sslkd.weights"],
    ["sslkd.data", "sslkd.models"],
    ["sslkd.losses", "sslkd.eval"],
    ["sslkd.methods"],
    ["sslkd.config"],
    ["sslkd.pretrained", "sslkd.teachers", "sslkd.estimate", "sslkd.autoconfig"],
    ["sslkd.train"],
    ["sslkd.experiments", "sslkd.report", "sslkd.export", "sslkd.bench", "sslkd.demo", "sslkd.docs", "sslkd.api"],
    ["sslkd.commands", "sslkd.cli", "sslkd.__main__", "sslkd"],
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> tuple[set[str], list[str]]:
    """(sslkd modules ``name`` imports, with the packages whose ``__init__`` that runs; imports
    of sslkd modules made inside functions)."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    targets, hidden = set(), []
    top = set(id(n) for n in tree.body)

    def add(target: str) -> None:
        if target.endswith("."):  # an f-string's constant prefix: every module under it
            for m in modules:
                if m.startswith(target):
                    add(m)
            return
        if target not in modules:
            return
        parts = target.split(".")
        for i in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ first
            t = ".".join(parts[:i])
            if not name.startswith(t + ".") and t != name:
                targets.add(t)

    for node in tree.body:  # lazy_import("sslkd.x") at a module's top: an import, made at first use
        call = node.value if isinstance(node, ast.Assign) else None
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "lazy_import" and call.args:
            add(call.args[0].value)
    for node in ast.walk(tree):
        named = _imported_by_name(node)
        if named:
            add(named)
        if isinstance(node, ast.Import):
            found = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            found = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found = [f for f in found if f.startswith("sslkd")]
        for f in found:
            add(f)
        if (
            found
            and id(node) not in top
            and not any(id(node) in {id(n) for n in ast.walk(t)} for t in tree.body if isinstance(t, ast.If))
        ):
            hidden.append(f"{name}:{node.lineno}")
    return targets, hidden


def _imported_by_name(node: ast.AST) -> str | None:
    """The module an ``import_module("sslkd...")`` call names (an f-string: its constant prefix)."""
    if not (isinstance(node, ast.Call) and node.args):
        return None
    func = node.func
    if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) != "import_module":
        return None
    arg = node.args[0]
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        arg = arg.values[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("sslkd"):
        return arg.value
    return None


def _graph():
    modules = _modules()
    return modules, {m: _imports(m, p, modules) for m, p in modules.items()}


def _layer(module: str) -> int:
    best = -1, 0
    for i, layer in enumerate(LAYERS):
        for prefix in layer:
            under = prefix != "sslkd" and module.startswith(prefix + ".")
            if (module == prefix or under) and len(prefix) > best[1]:
                best = i, len(prefix)
    return best[0]


def test_the_import_graph_has_no_cycle():
    _, graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m][0]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t) :] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles[:10])


def test_sslkd_imports_are_at_the_top_of_each_module():
    _, graph = _graph()
    hidden = [h for _, (_, hs) in sorted(graph.items()) for h in hs]
    assert not hidden, f"sslkd imported inside a function (a hidden cycle or layer breach): {hidden}"


def test_the_checks_see_imports_by_name_and_unplaced_modules():
    _, graph = _graph()
    assert "sslkd.api" in graph["sslkd"][0]  # importlib.import_module("sslkd.api") in a function
    assert "sslkd.commands.pretrain" in graph["sslkd.cli"][0]  # import_module(f"sslkd.commands.{name}")
    assert "sslkd.api" in graph["sslkd.commands.pretrain"][0]  # lazy_import("sslkd.api")
    assert _layer("sslkd.new_module") == -1 and _layer("sslkd") == len(LAYERS) - 1
    assert _layer("sslkd.data.new_source") == _layer("sslkd.data")


def test_every_module_imports_only_its_own_layer_or_lower_ones():
    _, graph = _graph()
    unplaced = [m for m in graph if _layer(m) < 0]
    assert not unplaced, f"modules in no layer (add them to LAYERS): {unplaced}"
    upward = [
        f"{m} -> {t}" for m, (targets, _) in sorted(graph.items()) for t in sorted(targets) if _layer(t) > _layer(m)
    ]
    assert not upward, "imports pointing up the layers:\n" + "\n".join(upward)


def test_only_the_data_layer_tells_in_memory_sets_from_sources_read_per_image():
    """The engine, evaluations and commands take their views from sslkd.data.views; none of them
    reads a dataset's ``lazy`` flag (issue 30: one image-source contract)."""
    readers = []
    for name, path in sorted(_modules().items()):
        if name.startswith("sslkd.data"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            flag = isinstance(node, ast.Attribute) and node.attr == "lazy"
            flag = flag or isinstance(node, ast.Constant) and node.value == "lazy"
            if flag:
                readers.append(f"{name}:{node.lineno}")
    assert not readers, f"reads a dataset's lazy flag outside sslkd.data: {readers}"
