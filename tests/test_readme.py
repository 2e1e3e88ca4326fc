"""The README's quick-start commands stay runnable and match CI, and its
"Adding a method" example works as written."""

import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
  readme = (ROOT / "README.md").read_text()
  quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```bash\n(.+?)\n```", quick_start)


def test_ci_runs_the_readme_test_command():
  commands = _quick_start_commands()
  assert len(commands) == 2, commands
  ci_lines = [
      line
      for line in (ROOT / ".ci" / "run").read_text().splitlines()
      if line.strip() and not line.lstrip().startswith("#")
  ]
  assert ci_lines[-1] == commands[1]
  assert "pytest" in commands[1]


def test_readme_training_command_names_existing_files():
  train = _quick_start_commands()[0]
  assert "python3 -m maskcon_jax.train" in train
  assert "dataset-fashion-mnist" in train
  for path in re.findall(r"(?:-r|--config) (\S+)", train):
    assert (ROOT / path).is_file(), path


def _adding_a_method() -> str:
  readme = (ROOT / "README.md").read_text()
  return readme.split("## Adding a method", 1)[1].split("\n## ", 1)[0]


@pytest.mark.slow
def test_adding_a_method_example_works_as_written(tmp_path):
  """The README's SimCLR example, pasted into a copy of the repository: its
  module, registry entry, config and test file, and nothing else."""
  section = _adding_a_method()
  files = dict(
      re.findall(r"`([\w/.]+\.py)`:\n\n```python\n(.*?\n)```", section, re.S)
  )
  assert set(files) == {
      "maskcon_jax/methods/simclr.py",
      "configs/simclr.py",
      "tests/test_methods_simclr.py",
  }
  registry = section.split("The registry entry", 1)[1]
  import_line, entry = re.findall(r"```python\n(.*?)\n```", registry, re.S)[:2]

  repo = tmp_path / "repo"
  for name in ("maskcon_jax", "configs"):
    shutil.copytree(
        ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__")
    )
  (repo / "tests").mkdir()
  for name in ("__init__.py", "conftest.py", "data/fixture_env.py"):
    (repo / "tests" / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "tests" / name, repo / "tests" / name)
  for path, text in files.items():
    (repo / path).write_text(text)
  init = repo / "maskcon_jax" / "methods" / "__init__.py"
  source = init.read_text()
  last_import = re.findall(
      r"^from maskcon_jax\.methods import \w+\n", source, re.M
  )[-1]
  source = source.replace(last_import, last_import + import_line + "\n", 1)
  last_entry = '    "saliency": saliency.METHOD,\n'
  assert last_entry in source
  source = source.replace(last_entry, last_entry + entry + "\n", 1)
  init.write_text(source)

  env = {**os.environ, "PYTHONPATH": str(repo)}
  out = subprocess.run(
      [
          sys.executable,
          "-m",
          "pytest",
          "-q",
          "-p",
          "no:cacheprovider",
          "tests/test_methods_simclr.py",
      ],
      cwd=repo,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
  assert "1 passed" in out.stdout
