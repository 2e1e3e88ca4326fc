"""The README's two quick-start commands stay runnable and match CI."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
  readme = (ROOT / "README.md").read_text()
  quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```bash\n(.+?)\n```", quick_start)


def test_ci_runs_the_readme_test_command():
  commands = _quick_start_commands()
  assert len(commands) == 2, commands
  ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
              if line.strip() and not line.lstrip().startswith("#")]
  assert ci_lines[-1] == commands[1]
  assert "pytest" in commands[1]


def test_readme_training_command_names_existing_files():
  train = _quick_start_commands()[0]
  assert "python3 -m maskcon_jax.train" in train
  assert "dataset-fashion-mnist" in train
  for path in re.findall(r"(?:-r|--config) (\S+)", train):
    assert (ROOT / path).is_file(), path
