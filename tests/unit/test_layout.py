"""The shape of the code base, checked: what issue "One shape for the house" promises.

Import contracts between packages are import-linter's (``scripts/check``); these are
the rules it cannot express: no ``_private`` name crosses a module boundary, no module
grows past 450 lines, and every service folder holds only a short factory.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
PACKAGES = (
    "voicemesh",
    "gateway",
    "client",
    "stt_tiny_ws",
    "stt_cpu_ws",
    "stt_gpu_ws",
    "tts_vits",
    "tts_clone",
)
SERVICES = ("stt_tiny_ws", "stt_cpu_ws", "stt_gpu_ws", "tts_vits", "tts_clone")
MAX_MODULE_LINES = 450
MAX_FACTORY_LINES = 45


def _modules(*roots: str) -> list[Path]:
    return sorted(p for root in roots for p in (REPO / root).rglob("*.py"))


def _module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(path: Path, node: ast.ImportFrom, root: Path) -> str:
    """The absolute module an ``from X import ...`` names, relative imports included."""
    if node.level == 0:
        return node.module or ""
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def private_imports(path: Path, root: Path = REPO) -> list[str]:
    """``from project.module import _name`` and ``project_module._name`` uses in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[str] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = _resolve(path, node, root)
            if module.split(".")[0] not in PACKAGES or module == _module_name(path, root):
                continue
            for name in node.names:
                if name.name.startswith("_") and not name.name.startswith("__"):
                    found.append(
                        f"{path.relative_to(root)}:{node.lineno} imports {module}.{name.name}"
                    )
                else:
                    aliases[name.asname or name.name] = f"{module}.{name.name}"
        elif isinstance(node, ast.Import):
            for name in node.names:
                if name.name.split(".")[0] in PACKAGES:
                    aliases[name.asname or name.name.split(".")[0]] = name.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(
                f"{path.relative_to(root)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}"
            )
    return found


def test_no_module_imports_a_private_name_of_another() -> None:
    found = [
        hit for path in _modules(*PACKAGES, "tests", "benchmarks") for hit in private_imports(path)
    ]
    assert found == []


def test_the_private_import_check_sees_one(tmp_path: Path) -> None:
    # The check itself must be able to fail: a file inside the project that does it.
    (tmp_path / "gateway").mkdir()
    probe = tmp_path / "gateway" / "probe.py"
    probe.write_text(
        "from gateway.stream import _x\nfrom .state import _z\n"
        "from .probe import _own\nimport voicemesh.audio as va\nva._y\n"
    )
    assert len(private_imports(probe, tmp_path)) == 3


def test_no_shared_or_gateway_module_is_over_450_lines() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in _modules("voicemesh", "gateway")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


@pytest.mark.parametrize("service", SERVICES)
def test_a_service_folder_holds_only_a_short_factory(service: str) -> None:
    app = REPO / service / "app.py"
    source = app.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= MAX_FACTORY_LINES
    tree = ast.parse(source)
    routes = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for deco in node.decorator_list
        if isinstance(deco, ast.Call)
        and isinstance(deco.func, ast.Attribute)
        and deco.func.attr in {"get", "post", "put", "delete", "websocket", "patch"}
    ]
    assert routes == []
    python_files = sorted(p.name for p in (REPO / service).glob("*.py"))
    assert python_files == ["__init__.py", "app.py"]


def test_no_route_is_declared_inside_a_function() -> None:
    nested = []
    for path in _modules(*PACKAGES):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for outer in ast.walk(tree):
            if not isinstance(outer, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for inner in ast.walk(outer):
                if inner is outer or not isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for deco in inner.decorator_list:
                    if (
                        isinstance(deco, ast.Call)
                        and isinstance(deco.func, ast.Attribute)
                        and deco.func.attr in {"get", "post", "put", "delete", "websocket", "patch"}
                    ):
                        nested.append(f"{path.relative_to(REPO)}:{inner.lineno}")
    assert nested == []


def test_no_service_code_bounds_a_wait_with_asyncio_wait_for() -> None:
    """3.11's ``wait_for`` can swallow a cancellation (see ``voicemesh.tasks``); use ``within``."""
    found = [
        f"{path.relative_to(REPO)}:{node.lineno}"
        for path in _modules(*(p for p in PACKAGES if p != "client"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Attribute)
        and node.attr == "wait_for"
        and isinstance(node.value, ast.Name)
        and node.value.id == "asyncio"
    ]
    assert found == []
