"""The package's shape: imports between subpackages only point down, and the optimizer stays a short loop."""

from __future__ import annotations

import ast
from pathlib import Path

import marquardt

PACKAGE = Path(marquardt.__file__).parent

#: Lower numbers sit lower in the house; an import may only point to the same room or a lower layer.
LAYERS = {
    "_C": 0, "_build_info": 0,  # the compiled library and the build's record
    "_loader": 1, "_meta": 1,  # loads _C; the ops' fake kernels
    "ops": 2, "parallel": 2,  # typed wrappers of the native ops; torch.distributed sums
    "types": 3,
    "solve": 4, "pde": 4,  # the linear solvers; differential operators on MLPs (Taylor mode)
    "policy": 5, "curvature": 5,
    "optim": 6, "baselines": 6,
    "__init__": 7,
}


def _room(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> set[str]:
    """The rooms (top-level modules or subpackages of marquardt) that this file imports."""
    tree = ast.parse(path.read_text())
    package = path.relative_to(PACKAGE).parent.parts
    rooms = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
                if not target:  # "from .. import ops": the names are the rooms
                    rooms.update(alias.name for alias in node.names)
                    continue
                rooms.add(target[0])
            elif node.module and node.module.split(".")[0] == "marquardt":
                parts = node.module.split(".")
                rooms.update([parts[1]] if len(parts) > 1 else [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "marquardt" and len(parts) > 1:
                    rooms.add(parts[1])
    return rooms


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        room = _room(path)
        graph.setdefault(room, set()).update(r for r in _imports(path) if r != room)
    return graph


def test_every_room_has_a_layer():
    assert set(_graph()) <= set(LAYERS), f"new rooms need a layer: {set(_graph()) - set(LAYERS)}"


def test_arrows_only_point_down():
    wrong = [f"{room} -> {target}" for room, targets in _graph().items() for target in targets
             if LAYERS[target] >= LAYERS[room]]
    assert not wrong, f"imports that do not point down: {wrong}"


def test_no_cycles_between_subpackages():
    graph = _graph()
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(room: str, stack: list[str]) -> None:
        state[room] = 1
        for target in graph.get(room, ()):
            assert state.get(target) != 1, f"import cycle: {' -> '.join([*stack, room, target])}"
            if target not in state:
                visit(target, [*stack, room])
        state[room] = 2

    for room in graph:
        if room not in state:
            visit(room, [])


def test_the_optimizer_is_a_short_loop_without_type_switches():
    source = (PACKAGE / "optim" / "levenberg_marquardt.py").read_text()
    assert len(source.splitlines()) <= 300
    tree = ast.parse(source)
    checks = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance"]
    names = {ast.unparse(c.args[1]) for c in checks}
    assert names <= {"nn.Module", "str"}, f"isinstance on pieces in the optimizer: {names}"


def test_the_layer_test_sees_imports():
    """The parser must find the real arrows, or the tests above would pass on nothing."""
    graph = _graph()
    assert {"solve", "types", "ops"} <= graph["curvature"] | {"ops"}
    assert {"curvature", "policy", "solve", "types"} <= graph["optim"]
    assert "types" in graph["solve"] and "ops" in graph["solve"]
