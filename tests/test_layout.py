"""The repository's conventions: tests mirror modules, long modules say why.

Each module ``maskcon_jax/X.py`` has ``tests/test_X.py`` (``maskcon_jax/P/X.py``:
``tests/test_P_X.py``; a package's ``__init__``: ``tests/test_P.py``), or is
listed in `TESTED_IN` with the test file that covers it and why it has none
of its own. A test file that mirrors no module is a scenario across modules,
listed in `SCENARIOS` with what it checks.
"""

import ast
import pathlib
import re

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "maskcon_jax"
TESTS = REPO_ROOT / "tests"

# Module -> (the test file that covers it, why it has none of its own).
TESTED_IN = {
    "configuration": ("bad_inputs", "its one-line errors, input by input"),
    "errors": ("bad_inputs", "exception classes only"),
    "figures": ("evaluate", "the figures the evaluation CLI writes"),
    "filters": ("augment", "the blur, against SciPy, through its users"),
    "launch_local": ("multiprocess", "it exists to start those runs"),
    "trainer": ("train", "the loop, through the CLI and in-process runs"),
    "datasets": ("input_pipeline", "the package docstring only"),
    "datasets_builtin": ("input_pipeline", "through load_dataset"),
    "datasets_core": ("input_pipeline", "the containers, via load_dataset"),
    "methods_base": ("methods", "the registry and every method together"),
    "methods_queue": ("methods", "the registry and every method together"),
    "methods_saliency": ("methods", "the registry and every method together"),
    "methods_selfcon": ("methods", "the registry and every method together"),
    "methods_wcl": ("methods", "the registry and every method together"),
}
# Test files across modules -> what they check.
SCENARIOS = {
    "bad_inputs": "every bad config value and input ends in one line",
    "benchmarks": "the benchmark scripts run and their statistics",
    "coarse_map": "config.coarse_map on every dataset with fine labels",
    "configs_train": "every config file trains",
    "datasets_configs": "the paper datasets' configs and hierarchies",
    "layout": "this file",
    "legacy_workdirs": "workdirs of earlier versions resume",
    "methods_train": "every method trains, evaluates and resumes",
    "multiprocess": "two JAX processes train as one",
    "notebooks": "the colabs run",
    "parallel": "1 and 8 devices give the same step",
    "precision": "bfloat16 against float32",
    "readme": "the README's commands and examples",
    "reliability": "kills, locks, full disks, other data",
}
# A module longer than this says why in its docstring ("over 600 lines").
MAX_LINES = 650


def _module_names():
  names = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts == ("__init__",):
      continue
    if parts[-1] == "__init__":
      parts = parts[:-1]
    names["_".join(parts)] = path
  return names


def test_every_module_has_a_test_file():
  modules = _module_names()
  tests = {p.stem.removeprefix("test_") for p in TESTS.glob("test_*.py")}
  untested = sorted(set(modules) - tests - set(TESTED_IN))
  assert not untested, f"add tests/test_<module>.py for {untested}"
  stale = sorted(set(TESTED_IN) & tests)
  assert not stale, f"{stale} have their own test files: drop them here"
  for module, (test, _) in TESTED_IN.items():
    assert module in modules, f"TESTED_IN names no module {module}"
    assert test in tests, f"tests/test_{test}.py does not exist"
  unmirrored = sorted(tests - set(modules) - set(SCENARIOS))
  assert not unmirrored, (
      f"tests/test_{unmirrored[0]}.py mirrors no module: name it after its "
      "module or list it in SCENARIOS"
  )


def test_long_modules_say_why():
  for name, path in _module_names().items():
    source = path.read_text()
    if source.count("\n") <= MAX_LINES:
      continue
    docstring = ast.get_docstring(ast.parse(source)) or ""
    assert re.search(r"over 600 lines", docstring), (
        f"{path.relative_to(REPO_ROOT)} has {source.count(chr(10))} lines: "
        "split it or say why in its docstring"
    )
