"""The code's shape, checked: small files and functions, no import circles, capabilities not isinstance."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fewtune.methods import Method

SRC = Path(__file__).resolve().parents[1] / "src" / "fewtune"
MAX_LINES = 400
MAX_FUNCTION_LINES = 100
BACKEND_CLASSES = {"HFBackend", "OpenAICompatBackend", "FakeBackend", "GenerateAndParse"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every fewtune module ``path`` imports: at module level, inside functions (lazy) and for type
    checking alike, since each is a dependency of the code's structure."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in modules}


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_file_is_past_the_line_limit(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines: split it"


_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _span(node: ast.stmt) -> int:
    """Lines a definition takes, its decorators included."""
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    return (node.end_lineno or node.lineno) - first + 1


def _nested_definitions(node: ast.AST) -> list[ast.stmt]:
    """The functions and classes defined anywhere inside ``node``, outermost only."""
    found: list[ast.stmt] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, _DEFINITIONS):
            found.append(child)
        else:
            found.extend(_nested_definitions(child))
    return found


def _body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the function's end, less the nested
    functions and classes (each is counted as a function of its own)."""
    body = function.body
    docstring = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
    first = body[1] if docstring and len(body) > 1 else body[0]
    total = (function.end_lineno or function.lineno) - first.lineno + 1
    return total - sum(_span(n) for n in _nested_definitions(function))


def test_no_function_is_past_the_line_limit() -> None:
    """Short functions are read and tested one idea at a time."""
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = _body_lines(node)
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.name} ({lines} lines)")
    assert not long, f"split these by idea (at most {MAX_FUNCTION_LINES} lines each): {long}"


def test_no_import_circles() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "open":
            loop = [*trail[trail.index(name) :], name]
            raise AssertionError("import circle: " + " -> ".join(loop))
        state[name] = "open"
        for dependency in sorted(graph[name]):
            visit(dependency, [*trail, name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])


# The layers, top first: a module imports from its own layer or those below it (docs/development.md).
LAYERS = (
    ("cli",),
    ("api",),
    ("release", "serve", "report"),
    ("run",),
    ("tasks", "strategies", "training"),
    ("decide",),
    ("results", "config", "config_yaml"),
    ("prompts",),
    ("data",),
    ("backends", "embeddings", "hosted"),
)
"""Everything else (errors, methods, metrics, files, sysinfo, ...) is a utility under them all; the package
itself exports the library face (``api``, which the CLI is a thin layer over) and ``__main__`` runs the CLI:
they sit above them all."""
ABOVE_ALL = {"fewtune", "__main__"}


def _layer(module: str) -> int:
    top = module.removeprefix("fewtune.").split(".")[0]
    if top in ABOVE_ALL:
        return -1
    return next((i for i, group in enumerate(LAYERS) if top in group), len(LAYERS))


def test_no_import_goes_up_the_layers() -> None:
    modules = _modules()
    upward = [
        f"{name} -> {other}"
        for name, path in modules.items()
        for other in _imports(path, modules)
        if _layer(other) < _layer(name)
    ]
    assert not upward, "imports against the layer order (docs/development.md): " + ", ".join(sorted(upward))


def test_no_isinstance_on_a_backend_class_outside_backends() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if "backends" in path.relative_to(SRC).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance":
                classes = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                if classes & BACKEND_CLASSES:
                    offenders.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not offenders, f"ask backend.capabilities instead of isinstance: {offenders}"


TASK_NAMES = {"classification", "extraction", "generation", "multi-label"}
TASK_NAME_CONSTANTS = {"CLASSIFICATION", "EXTRACTION", "GENERATION", "MULTI_LABEL", "MULTILABEL"}


def _names_a_task(node: ast.expr) -> bool:
    """A task's name, as a literal or one of the tasks' name constants, or a tuple, list or set of them."""
    if isinstance(node, ast.Constant):
        return node.value in TASK_NAMES
    if isinstance(node, ast.Name | ast.Attribute):
        return (node.id if isinstance(node, ast.Name) else node.attr) in TASK_NAME_CONSTANTS
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return any(_names_a_task(element) for element in node.elts)
    return False


TASK_NAME_COMPARISONS_ALLOWED: set[tuple[str, str]] = set()


def task_name_comparisons(source: str) -> list[tuple[int, str]]:
    """(line, enclosing function or '') of every comparison in ``source`` with a task's name (``==``,
    ``!=``, ``in``, ``is``, or a ``case``)."""
    tree = ast.parse(source)
    owner: dict[int, str] = {}
    for function in ast.walk(tree):  # outer functions first, so an inner one's name wins for its nodes
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            owner.update((id(node), function.name) for node in ast.walk(function))
    found = []
    for node in ast.walk(tree):
        compared = isinstance(node, ast.Compare) and [node.left, *node.comparators]
        cased = isinstance(node, ast.MatchValue) and [node.value]
        if any(_names_a_task(n) for n in compared or cased or []):
            found.append((node.lineno, owner.get(id(node), "")))  # type: ignore[attr-defined]
    return found


def test_no_module_outside_tasks_compares_a_task_name() -> None:
    """What differs between tasks is an attribute or method of the task type (tasks/base.py): code outside
    tasks/ asks the task (``task_type(name).open_output``), never which task it is."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        where = path.relative_to(SRC).as_posix()
        if where.startswith("tasks/"):
            continue
        for line, function in task_name_comparisons(path.read_text(encoding="utf-8")):
            if (where, function) not in TASK_NAME_COMPARISONS_ALLOWED:
                offenders.append(f"{where}:{line}")
    assert not offenders, f"ask the task type instead of comparing its name: {offenders}"


@pytest.mark.parametrize(
    "line",
    [
        'if task == "classification": pass',
        "if baseline.task_name != CLASSIFICATION: pass",
        "ok = name in (EXTRACTION, GENERATION)",
        "ok = task in (None, 'classification')",
        'ok = block.get("name", "classification") == "classification"',
        "ok = tasks.MULTI_LABEL is name",
        'match name:\n    case "extraction": pass',
    ],
)
def test_the_task_name_rule_sees_each_kind_of_comparison(line: str) -> None:
    assert task_name_comparisons(line)


def test_the_task_name_rule_leaves_other_uses_of_a_name_alone() -> None:
    source = 'block = {"name": CLASSIFICATION}\nname = task or "classification"\nok = kind.open_output\n'
    assert task_name_comparisons(source) == []


# -- the typed run record ------------------------------------------------------------------------------------


def test_a_run_record_reads_and_writes_results_unchanged() -> None:
    from fewtune.results.run_record import RunRecord

    results = {
        "schema_version": 2,
        "fewtune_version": "0",
        "task": {"name": "multi-label", "primary_metric": "micro-f1"},
        "status": "complete",
        "model": "m",
        "seed": 0,
        "methods": [
            {
                "method": "zero-shot",
                "name": "zero-shot",
                "shots": 0,
                "metrics": {"micro_f1": {"value": 0.5, "ci95": [0.4, 0.6]}},
            },
            {
                "method": "lora",
                "name": "lora n=8",
                "shots": 0,
                "train_examples": 8,
                "accuracy": 0.9,
                "accuracy_ci95": [0.8, 1.0],
                "macro_f1": 0.7,
            },
        ],
    }
    record = RunRecord.from_dict(results)
    assert record.to_dict() == results and list(record.to_dict()) == list(results)
    assert record.task_name == "multi-label"
    assert record.method("zero-shot").metrics["micro_f1"]["value"] == 0.5
    lora = record.method("lora n=8")
    assert lora.method.fine_tuned and lora.train_examples == 8
    assert (
        lora.metrics["accuracy"] == {"value": 0.9, "ci95": [0.8, 1.0]}
        and lora.metrics["macro_f1"]["ci95"] == []
    )


def test_a_version_1_record_is_read_and_a_newer_one_refused() -> None:
    from fewtune.errors import FewtuneError
    from fewtune.results.run_record import SCHEMA_VERSION, RunRecord

    old = RunRecord.from_dict(
        {
            "status": "complete",
            "methods": [{"method": "few-shot", "shots": 4, "accuracy": 0.5, "accuracy_ci95": [0.4, 0.6]}],
        }
    )
    assert old.schema_version == SCHEMA_VERSION and old.task_name == "classification"
    assert old.methods[0].name == "few-shot"
    with pytest.raises(FewtuneError, match=r"results\.json: schema_version 3 is newer"):
        RunRecord.from_dict({"schema_version": 3, "methods": []})
    with pytest.raises(FewtuneError, match="unknown method 'magic'"):
        RunRecord.from_dict({"methods": [{"method": "magic"}]})


def test_one_module_writes_results_json() -> None:
    """results.json is written through RunSession only (the report writes analysis.json beside it)."""
    writers = set()
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            called = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            if called and node.func.attr == "write_results":  # type: ignore[attr-defined]
                writers.add(path.relative_to(SRC).as_posix())
    assert writers == {"run/session.py"}


# -- method names -----------------------------------------------------------------------------------------

# Strings that equal a method's name but mean something else: config.yaml's section of training settings, and
# the report's word for a row's expected output beside each method's.
NOT_METHOD_NAMES = {("config.py", "TRAINING_SECTION"), ("report/outputs_render.py", "reference")}


def method_name_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal in ``source`` that is a method's name (docstrings aside); the text
    is the name a constant is assigned to, else the literal."""
    names = {m.value for m in Method}
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    constants = {
        id(node.value): node.targets[0].id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
    }
    return [
        (node.lineno, constants.get(id(node), node.value))
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in names and id(node) not in docstrings
    ]


def test_method_name_literals_are_found() -> None:
    source = '"""lora"""\nA = "lora"\nif m == "few-shot":\n    pass\nb = Method.LORA\nc = "lora n=8"\n'
    assert sorted(method_name_literals(source)) == [(2, "A"), (3, "few-shot")]


def test_no_method_name_literal_outside_methods_py() -> None:
    """A method is named by ``fewtune.methods.Method``, so a new one is one edit there."""
    found = [
        f"{where}:{line} ({text})"
        for path in sorted(SRC.rglob("*.py"))
        if (where := path.relative_to(SRC).as_posix()) != "methods.py"
        for line, text in method_name_literals(path.read_text(encoding="utf-8"))
        if (where, text) not in NOT_METHOD_NAMES
    ]
    assert not found, f"name methods through fewtune.methods.Method, not as strings: {found}"
