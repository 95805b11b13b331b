"""The import graph of jann is a DAG, counting imports inside functions too (a late
import that dodges a cycle at load time is still a cycle in the design), and every
module imports on its own."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"jann": ROOT / "jann", "jann.ops": ROOT / "ops"}


def _modules():
    """{module name: path} for every module of the package (ops/ installs as jann.ops)."""
    out = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if package == "jann" and parts[:1] == ("data",):
                continue
            name = ".".join((package, *parts))
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(name, path, known):
    """The package modules `name` imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = ".".join(base[: len(base) - node.level + 1])
                module = f"{stem}.{node.module}" if node.module else stem
            else:
                module = node.module
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def import_graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def find_cycle(graph):
    """One cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


# Package __init__ files re-export their package: parents import children, never back.
def test_import_graph_has_no_cycle():
    graph = {name: {t for t in targets if not name.startswith(t + ".")}
             for name, targets in import_graph().items()}
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


# Importing any jann.x first runs jann/__init__ first, and that imports most modules in
# one fixed order: for each of those, "imported first" is `import jann` itself (checked
# once). Each module `import jann` does not load is then imported first on its own.
_IMPORT_ALONE = """
import importlib, sys
def unload():
    for loaded in [m for m in sys.modules if m == "jann" or m.startswith("jann.")]:
        del sys.modules[loaded]
import jann
closure = {m for m in sys.modules if m == "jann" or m.startswith("jann.")}
for name in sys.argv[1:]:
    if name in closure:
        continue
    unload()
    try:
        importlib.import_module(name)
    except Exception as e:
        print(f"{name}: {type(e).__name__}: {e}")
"""


def test_every_module_imports_alone():
    """Each module, imported first (the others unloaded), loads: no module leans on an
    import order that only `import jann` happens to give."""
    names = sorted(n for n in import_graph() if n != "jann" and not n.endswith(".__main__"))
    proc = subprocess.run([sys.executable, "-c", _IMPORT_ALONE, *names], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr[-2000:]


_IMPORT_WITHOUT_INSTALL = """
import sys
# no editable install: the checkout's jann as python run from its root sees it
def editable(f):
    return "editable" in (getattr(f, "__module__", "") + type(f).__module__).lower()
sys.meta_path[:] = [f for f in sys.meta_path if not editable(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not editable(h)]
sys.path_importer_cache.clear()
import importlib, jann
print(jann.__file__, jann.ops.__file__, importlib.import_module("jann.ops.knn").__file__)
"""


def test_the_source_tree_imports_as_the_wheel():
    """From the repository root `import jann` takes the checkout's jann/, whose jann.ops
    lives in ops/ (a wheel puts it in jann/ops): it must import without an editable
    install too (after `pip install .`, say)."""
    proc = subprocess.run([sys.executable, "-c", _IMPORT_WITHOUT_INSTALL], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    package, ops, knn = proc.stdout.split()
    assert Path(package).parent == ROOT / "jann"
    assert Path(ops).parent == ROOT / "ops" and Path(knn).is_relative_to(ROOT / "ops")


def _private_uses(name, path, known):
    """`from module import _private` and `module._private` across package modules."""
    tree = ast.parse(path.read_text())
    modules_bound = set()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                full = f"{node.module}.{alias.name}" if node.module and not node.level else None
                if full in known or (node.level and alias.name in _SIBLINGS):
                    modules_bound.add(alias.asname or alias.name)
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{name} imports {alias.name} from {node.module}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in modules_bound and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            found.append(f"{name} uses {node.value.id}.{node.attr}")
    return found


_SIBLINGS = {n.rpartition(".")[2] for n in _modules()}


def test_no_private_name_crosses_modules():
    known = _modules()
    found = [use for name, path in known.items() for use in _private_uses(name, path, known)]
    assert not found, "\n".join(found)


def test_every_package_is_installed():
    """pyproject.toml lists the packages (ops/ installs as jann.ops, so they are not
    discovered): a package missing there works in a checkout and is absent from a wheel."""
    import tomllib
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    packages = {name for name, path in _modules().items() if path.name == "__init__.py"}
    assert packages <= listed, f"add to pyproject.toml packages: {sorted(packages - listed)}"


MAX_MODULE_LINES = 520


def test_no_module_is_too_long_to_read():
    """A module holds one responsibility; one past ~500 lines holds several (split it into
    a package whose file names say what is inside, as jann/ivf/ and jann/graph/)."""
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_import_jann_and_the_client_import_no_jax():
    """`import jann` and `jann.client` (standard library and numpy) load without jax, so a
    client process starts in a tenth of a second; jann's names import on first use."""
    code = ("import sys, jann.client, jann\n"
            "assert 'jax' not in sys.modules, 'jax was imported'\n"
            "assert callable(jann.search) and 'jax' in sys.modules\n"
            "assert set(jann.__all__) <= set(dir(jann))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
