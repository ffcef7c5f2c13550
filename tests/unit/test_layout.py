"""The tree keeps the shape the README's code map draws: wings whose dependencies point one way,
no import cycles, librdkafka behind `worker/stream`. Size is limited per function by ruff (C901,
PLR0912, PLR0915 in pyproject.toml), not per module by a line count."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("worker", "adapters", "registry", "devkit")
# Modules are named here by their folder (`worker.stream.kafka`); they are imported as
# `llm_worker.<folder>...` (llm_worker/__init__.py), which `_imports` reads back to these names.
INSTALLED = "llm_worker."


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports (at any depth of its code), resolved to absolute names."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name.removeprefix(INSTALLED) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = (node.module or "").removeprefix(INSTALLED)
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in found if m in MODULES or m.split(".")[0] not in PACKAGES}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _importers_of(prefix: str) -> dict[str, set[str]]:
    return {
        name: {m for m in deps if m == prefix or m.startswith(prefix + ".")}
        for name, deps in GRAPH.items()
    }


def test_adapters_and_registry_import_nothing_from_worker() -> None:
    bad = {
        n: deps
        for n, deps in _importers_of("worker").items()
        if n.startswith(("adapters", "registry")) and deps
    }
    assert not bad


def test_stream_and_calling_do_not_import_each_other() -> None:
    for a, b in (("worker.stream", "worker.calling"), ("worker.calling", "worker.stream")):
        bad = {n: d for n, d in _importers_of(b).items() if n.startswith(a) and d}
        assert not bad, f"{a} imports {b}: {bad}"


def test_the_service_never_imports_the_tools() -> None:
    """The devkit is not in the wheel: the service's command line finds it by name, at run time,
    and says where it lives when it is not there (test_cli_tools.py)."""
    tools = ("devkit", "worker.cli")
    for tool in tools:
        bad = {
            n: d
            for n, d in _importers_of(tool).items()
            if d and not n.startswith(tools) and n != "worker"
        }
        assert not bad, f"the service imports {tool}: {bad}"
    cli_to_devkit = {
        n: d for n, d in _importers_of("devkit").items() if d and n.startswith("worker")
    }
    assert not cli_to_devkit, cli_to_devkit


def _top_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_code_imports_the_installed_names_only() -> None:
    """`import worker` works in a checkout (the folder is on the path) but not from the wheel,
    and would load a second copy of every module beside `llm_worker.worker`."""
    sources = [*MODULES.values(), *(ROOT / "tests").rglob("*.py"), *(ROOT / "tools").rglob("*.py")]
    bare = {
        p.relative_to(ROOT).as_posix(): sorted(_top_level_imports(p) & {*PACKAGES, "migrations"})
        for p in sources
    }
    assert not {p: b for p, b in bare.items() if b}


LIBRDKAFKA_SEAM = {
    # the service's one seam to Kafka (worker/stream/transport.py is its plain-typed side)
    "worker.stream.kafka",  # the bridge: consumer, producer, transactions
    "worker.stream.kafka_conf",  # client configuration, records and errors in plain types
    "worker.stream.kafka_producer",  # the producer the bridge replaces when it is forgotten
    "worker.stream.admin",  # cluster calls at start: broker wait, topics, group size
    "worker.stream.commits",  # offset commits answered through on_commit
    "worker.stream.batch_sender",  # the batch lane's transactional deliveries and markers
    "worker.stream.kafka_client",  # plain clients for `llm-worker send` and the bench
}
LIBRDKAFKA_TOOLS = {
    # tools, not the service: each drives librdkafka in ways the worker never does
    "devkit.kafka_broker": "dev broker: an admin client waits for the JVM it started",
    "devkit.kafka_cluster": "dev cluster: admin calls to watch leaders move between nodes",
    "devkit.bench.baseline": "the plain consume-produce loop the worker is measured against",
    "devkit.bench.harness": "bench topics made and read at exact offsets, outside any group",
    "devkit.bench.traffic": "bench load and readers that re-read whole topics by offset",
}


def test_only_the_named_modules_import_librdkafka() -> None:
    users = {
        n
        for n, deps in GRAPH.items()
        if any(d == "confluent_kafka" or d.startswith("confluent_kafka.") for d in deps)
    }
    assert users == LIBRDKAFKA_SEAM | set(LIBRDKAFKA_TOOLS), sorted(users)


def test_no_import_cycles() -> None:
    # edges between our own modules; a package's __init__ re-exporting its children is not a
    # cycle in the sense that matters (children never import their package's __init__ here)
    edges = {n: {d for d in deps if d in MODULES and d != n} for n, deps in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in edges[n]:
            if d.startswith(n + "."):  # a package importing its own children
                continue
            if state.get(d) == 1:
                cycle = [*stack[stack.index(d) :], d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(edges):
        if n not in state:
            visit(n)
