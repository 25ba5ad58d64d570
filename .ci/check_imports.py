"""Imports flow one way: check the layer rule statically, then import every module first in a fresh interpreter.

    python .ci/check_imports.py

1. Static: every `hf_longssm` import (at any depth, in any function) goes to a module of the same or a lower layer
   (ARCHITECTURE.md); an import of our own code inside a function is reported too (no lazy imports for cycles),
   except of a module that needs an optional package (`OPTIONAL`: fla, which imports Triton).
2. Dynamic: each module is imported first in a fresh process (forked after importing torch and transformers), and
   all of them in forward and reverse order: an import cycle or an import-order dependence fails here.
Exit status 1 on any violation, with one line per problem.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PACKAGE = ROOT / "hf_longssm"

# Lower layers first; a module may import its own layer and those below. Longest prefix wins.
LAYERS = {
    "hf_longssm.modeling.compat": 0.0,
    "hf_longssm.modeling.ops": 0.0,
    "hf_longssm.modeling.delta": 0.0,
    "hf_longssm.modeling.kernels": 0.1,
    "hf_longssm.modeling.base": 0.1,
    "hf_longssm.modeling.mamba": 0.2,
    "hf_longssm.modeling.falcon_mamba": 0.2,
    "hf_longssm.modeling.mamba2": 0.2,
    "hf_longssm.modeling.hybrid": 0.25,
    "hf_longssm.modeling.granitemoehybrid": 0.26,
    "hf_longssm.modeling.bamba": 0.26,
    "hf_longssm.modeling.nemotron_h": 0.26,
    "hf_longssm.modeling.jamba": 0.26,
    "hf_longssm.modeling.falcon_h1": 0.26,
    "hf_longssm.modeling.zamba2": 0.26,
    "hf_longssm.modeling.gated_deltanet": 0.26,
    "hf_longssm.modeling.fla_layers": 0.26,
    "hf_longssm.modeling.gla": 0.27,
    "hf_longssm.modeling.rwkv7": 0.28,
    "hf_longssm.modeling.rwkv6": 0.29,
    "hf_longssm.modeling.fla_gated_deltanet": 0.28,
    "hf_longssm.modeling.qwen3_next": 0.27,
    "hf_longssm.modeling.qwen3_5": 0.27,
    "hf_longssm.modeling.qwen3_5_moe": 0.28,
    "hf_longssm.modeling.olmo_hybrid": 0.27,
    "hf_longssm.modeling.lfm2": 0.27,
    "hf_longssm.modeling.xlstm": 0.27,
    "hf_longssm.modeling.registry": 0.3,
    "hf_longssm.modeling": 0.4,
    "hf_longssm.state": 1,
    "hf_longssm.forward": 2,
    "hf_longssm.tokenization": 3,
    "hf_longssm.corpus": 3,
    "hf_longssm.synthetic": 3,
    "hf_longssm.versions": 3,
    "hf_longssm.files": 3,
    "hf_longssm.extension": 3,
    "hf_longssm.loading": 4,
    "hf_longssm.mamba_ssm_format": 4,
    "hf_longssm.sources": 4,
    "hf_longssm.hub": 4,
    "hf_longssm.evaluation": 5,
    "hf_longssm.training": 6,
    "hf_longssm.extend": 6,
    "hf_longssm.cli": 7,
    "hf_longssm.__main__": 8,
    "hf_longssm.evaluate": 8,
    "hf_longssm": 8,
}

# Modules that need an optional package to import (the package, by import name): imported only where a model needs
# them, so the families that do (inside a function) may, and the dynamic check imports them where it is installed.
OPTIONAL = {"hf_longssm.modeling.fla_layers": "fla"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> float:
    matches = [prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")]
    if not matches:
        raise SystemExit(f"{module} has no layer in .ci/check_imports.py: add it (and to ARCHITECTURE.md).")
    return LAYERS[max(matches, key=len)]


def modules() -> list[Path]:
    # The `evaluate` module scripts are loaded by `evaluate.load`, not imported as part of the package.
    return sorted(p for p in PACKAGE.rglob("*.py") if "evaluation/modules/" not in p.relative_to(PACKAGE).as_posix()
                  or p.name == "__init__.py")  # fmt: skip


def imported(path: Path) -> list[tuple[str, int, bool]]:
    """(`hf_longssm` module imported, line, inside a function) for every import of our own code in `path`."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    functions = {
        id(node): True
        for fn in ast.walk(tree)
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(fn)
    }
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from . import x` imports the submodule x when there is one.
            targets = [
                f"{stem}.{alias.name}" if (PACKAGE.parent / f"{stem}.{alias.name}".replace(".", "/")).exists()
                or (PACKAGE.parent / (f"{stem}.{alias.name}".replace(".", "/") + ".py")).exists() else stem
                for alias in node.names
            ]  # fmt: skip
        for target in targets:
            if target == "hf_longssm" or target.startswith("hf_longssm."):
                out.append((target, node.lineno, id(node) in functions))
    return out


def static_check() -> list[str]:
    problems = []
    for path in modules():
        name = module_name(path)
        for target, line, in_function in imported(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if layer(target) > layer(name):
                problems.append(f"{where}: {name} (layer {layer(name)}) imports {target} (layer {layer(target)})")
            if in_function and target not in OPTIONAL:
                problems.append(f"{where}: {name} imports {target} inside a function (import it at the top)")
    return problems


def _import_in_child(names: list[str]) -> str | None:
    """Fork, import `names` in order in the child with none of our modules loaded, and report the error."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        message = b""
        # A parent that imported us already (pytest) must not hide an order problem; lm_eval goes too, since importing
        # our harness registers a model in lm_eval's registry, which refuses a second registration.
        ours = ("hf_longssm", "lm_eval")
        for loaded in [m for m in sys.modules if m in ours or m.startswith(tuple(f"{o}." for o in ours))]:
            del sys.modules[loaded]
        try:
            for name in names:
                importlib.import_module(name)
        except BaseException as err:  # noqa: BLE001 (any failure is the finding)
            message = f"{type(err).__name__}: {err}".encode()
        os.write(write, message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        message = pipe.read().decode()
    os.waitpid(pid, 0)
    return message or None


def dynamic_check() -> list[str]:
    # Third-party packages are imported once in the parent; each child then imports our modules in a fresh order.
    for heavy in ("torch", "transformers", "transformers.trainer", "datasets", "accelerate", "huggingface_hub"):
        importlib.import_module(heavy)
    # `__main__` modules run the command line when imported: they are checked statically only.
    names = [module_name(p) for p in modules() if p.stem != "__main__"]
    names = [n for n in names if n not in OPTIONAL or importlib.util.find_spec(OPTIONAL[n]) is not None]
    jobs = {f"import {n} first": [n] for n in names}
    jobs["all modules, forward order"] = names
    jobs["all modules, reverse order"] = list(reversed(names))
    problems = []
    for job, order in jobs.items():
        error = _import_in_child(order)
        if error is not None:
            problems.append(f"{job}: {error}")
    return problems


def main() -> int:
    problems = static_check()
    problems += dynamic_check()
    for problem in problems:
        print(problem)
    count = len(modules())
    print(f"check_imports: {count} modules, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
