"""Every error code a client can receive is listed once, with its status, in docs/errors.md.

The source is read, not run: every ``code`` a service can put in an HTTP error body
or a WebSocket ``{"type":"error"}`` message is a string literal in one of these
places, and this test collects them all:

* ``code = "..."`` as a class attribute (of an error, or of a message model);
* ``code="..."`` passed to anything (``BadRequest(..., code="bad_json")``);
* a dict with a ``"code"`` key;
* the first argument of ``error(...)`` (not a logger's or a metric's),
  ``refuse(...)``, ``refuse_websocket(...)``, ``error_body(...)`` and ``Refusal(...)``;
* Starlette's own errors, through :data:`voicemesh.http.HTTP_ERROR_CODES`.

Where the code comes with an error class, the class's ``status_code`` (inherited
through the tree) must be the status the document gives: the same code has the same
HTTP status everywhere. And every exception class of the project is declared in
``voicemesh/errors.py`` and drawn in its docstring's tree.
"""

from __future__ import annotations

import ast
import functools
import re
from collections import defaultdict
from pathlib import Path

import pytest

from voicemesh.errors import backend_errors
from voicemesh.http import HTTP_ERROR_CODES, HTTP_ERROR_OTHER

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "errors.md"
SERVICE_DIRS = (
    "voicemesh",
    "gateway",
    "stt_cpu_ws",
    "stt_gpu_ws",
    "stt_tiny_ws",
    "tts_vits",
    "tts_clone",
)
CODE_CALLS = {"error", "refuse", "refuse_websocket", "error_body", "Refusal"}
NOT_SENT_BY = {"metrics", "_LOGGER", "logger", "logging"}
"""Receivers whose ``error(...)`` counts or logs rather than tells a client."""
CODE = re.compile(r"^[a-z][a-z0-9_]*$")
ROW = re.compile(r"^\|\s*`(?P<code>[a-z_]+)`\s*\|\s*(?P<status>\d{3}|—|any)\s*\|")


def source_files() -> list[Path]:
    """The Python files of every service and the shared package."""
    return sorted(p for d in SERVICE_DIRS for p in (ROOT / d).rglob("*.py"))


def _strings(node: ast.AST) -> list[str]:
    return [
        n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    ]


def _name(func: ast.expr) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


class ErrorClass:
    """What the source says about one exception class: its bases, code and status."""

    def __init__(self, bases: list[str], code: str | None, status: int | None) -> None:
        self.bases = bases
        self.code = code
        self.status = status


def read_classes(trees: dict[Path, ast.Module]) -> dict[str, ErrorClass]:
    """Every class of the scanned source, by name, with its literal code and status."""
    classes: dict[str, ErrorClass] = {}
    for tree in trees.values():
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef):
                continue
            code: str | None = None
            status: int | None = None
            for item in node.body:
                target = (
                    item.targets[0]
                    if isinstance(item, ast.Assign)
                    else (item.target if isinstance(item, ast.AnnAssign) else None)
                )
                value = getattr(item, "value", None)
                if not isinstance(target, ast.Name) or not isinstance(value, ast.Constant):
                    continue
                if target.id == "code" and isinstance(value.value, str):
                    code = value.value
                if target.id == "status_code" and isinstance(value.value, int):
                    status = value.value
            bases = [b for b in (_name(base) for base in node.bases) if b]
            classes[node.name] = ErrorClass(bases, code, status)
    return classes


def status_of(name: str, classes: dict[str, ErrorClass]) -> int | None:
    """The HTTP status of error class ``name``, inherited through the tree (None: no error)."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop(0)
        if current in seen or current not in classes:
            continue
        seen.add(current)
        if classes[current].status is not None:
            return classes[current].status
        todo.extend(classes[current].bases)
    return None


@functools.cache
def used_codes() -> tuple[dict[str, set[str]], dict[str, set[int]]]:
    """Every code in the source (code -> where), and the statuses its error classes give."""
    trees = {path: ast.parse(path.read_text(encoding="utf-8")) for path in source_files()}
    classes = read_classes(trees)
    where: dict[str, set[str]] = defaultdict(set)
    statuses: dict[str, set[int]] = defaultdict(set)
    for name, cls in classes.items():
        status = status_of(name, classes)
        if cls.code is not None and status is not None:
            statuses[cls.code].add(status)
    for path, tree in trees.items():
        place = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            found: list[str] = []
            if isinstance(node, ast.ClassDef):
                code = classes[node.name].code
                found = [code] if code is not None else []
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "code":
                        found += _strings(value)
            elif isinstance(node, ast.Call):
                for keyword in node.keywords:
                    if keyword.arg == "code":
                        codes = _strings(keyword.value)
                        found += codes
                        status = status_of(_name(node.func) or "", classes)
                        for code in codes:
                            if status is not None:
                                statuses[code].add(status)
                receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
                if (
                    _name(node.func) in CODE_CALLS
                    and node.args
                    and (receiver is None or _name(receiver) not in NOT_SENT_BY)
                ):
                    first = node.args[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        found.append(first.value)
            for code in filter(CODE.match, found):
                where[code].add(f"{place}:{getattr(node, 'lineno', '?')}")
    # nginx answers some refusals itself, in the same JSON shape (its error pages).
    template = ROOT / "nginx" / "nginx.conf.template"
    for number, line in enumerate(template.read_text(encoding="utf-8").splitlines(), 1):
        for code in re.findall(r'"code":"([a-z_]+)"', line):
            where[code].add(f"nginx/nginx.conf.template:{number}")
    for status, code in HTTP_ERROR_CODES.items():
        where[code].add("voicemesh/http.py:HTTP_ERROR_CODES")
        statuses[code].add(status)
    where[HTTP_ERROR_OTHER].add("voicemesh/http.py:HTTP_ERROR_OTHER")
    return where, statuses


def listed_codes(text: str) -> dict[str, str]:
    """The codes of the document's table and the status of each (``—``: WebSocket only)."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            assert match["code"] not in rows, f"{match['code']} is listed twice"
            rows[match["code"]] = match["status"]
    return rows


def test_every_code_the_source_uses_is_listed() -> None:
    where, _ = used_codes()
    listed = listed_codes(DOC.read_text(encoding="utf-8"))
    missing = {code: sorted(places) for code, places in where.items() if code not in listed}
    assert not missing, f"error codes not listed in docs/errors.md: {missing}"


def test_the_document_lists_no_code_the_source_never_uses() -> None:
    where, _ = used_codes()
    listed = listed_codes(DOC.read_text(encoding="utf-8"))
    assert not set(listed) - set(where), sorted(set(listed) - set(where))


def test_a_code_has_one_status_and_it_is_the_documented_one() -> None:
    _, statuses = used_codes()
    listed = listed_codes(DOC.read_text(encoding="utf-8"))
    conflicting = {code: sorted(found) for code, found in statuses.items() if len(found) > 1}
    assert not conflicting, f"one code, several HTTP statuses: {conflicting}"
    wrong = {
        code: (listed.get(code), sorted(found))
        for code, found in statuses.items()
        if listed.get(code) not in (str(next(iter(found))), None)
    }
    assert not wrong, f"documented status differs from the error class's: {wrong}"


def test_the_check_fails_on_an_unlisted_code() -> None:
    """The checks above can fail: a table without one row misses that code."""
    text = DOC.read_text(encoding="utf-8")
    listed = listed_codes(text)
    without = "\n".join(line for line in text.splitlines() if "`no_backend`" not in line)
    assert "no_backend" in listed and "no_backend" not in listed_codes(without)
    where, _ = used_codes()
    assert "no_backend" in where


def test_every_exception_class_is_in_errors_py_and_drawn_in_its_tree() -> None:
    import inspect

    from voicemesh import errors

    tree = errors.__doc__ or ""
    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj)
        and issubclass(obj, BaseException)
        and obj.__module__ == errors.__name__
    }
    assert {"VoiceMeshError", "PlanError", "ConnectionLost"} <= defined
    undrawn = sorted(name for name in defined if not re.search(rf"\b{name}\b", tree))
    assert not undrawn, f"classes of errors.py missing from its tree: {undrawn}"
    elsewhere = []
    for path in sorted(p for d in (*SERVICE_DIRS, "client") for p in (ROOT / d).rglob("*.py")):
        if path == ROOT / "voicemesh" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                (name := _name(base)) and (name in defined or name.endswith(("Error", "Exception")))
                for base in node.bases
            ):
                elsewhere.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not elsewhere, f"exception classes outside voicemesh/errors.py: {elsewhere}"


def test_backend_errors_translates_transport_failures() -> None:
    import httpx
    import websockets

    from voicemesh.errors import BackendClosed, BackendTimeout, BadRequest

    url = "http://127.0.0.1:9"
    with pytest.raises(BackendTimeout), backend_errors(url):
        raise httpx.ReadTimeout("slow")
    with pytest.raises(BackendTimeout), backend_errors(url):
        raise TimeoutError
    with pytest.raises(BackendClosed) as closed, backend_errors(url):
        raise httpx.ConnectError("refused")
    assert url in closed.value.message and isinstance(closed.value.__cause__, httpx.ConnectError)
    with pytest.raises(BackendClosed), backend_errors(url):
        raise websockets.ConnectionClosedError(None, None)
    with pytest.raises(BackendClosed), backend_errors(url):
        raise ConnectionRefusedError
    with pytest.raises(BadRequest), backend_errors(url):
        raise BadRequest("the tree passes through")
    with pytest.raises(ValueError), backend_errors(url):
        raise ValueError("not a transport failure")
