"""The mutation-testing configuration (pyproject's [tool.mutmut]) names what exists."""
import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def test_mutmut_config_names_existing_files_and_tests():
    tomllib = pytest.importorskip("tomllib")
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    sources = [p.relative_to(ROOT).as_posix() for p in (ROOT / "src").rglob("*.py")]
    for pattern in cfg["only_mutate"]:
        assert fnmatch.filter(sources, pattern), f"only_mutate {pattern!r} matches no file"
    assert all((ROOT / p).exists() for p in cfg["also_copy"] + cfg["source_paths"])
    args = cfg["pytest_add_cli_args_test_selection"]
    for i, arg in enumerate(args):
        if arg == "--deselect":
            path, name = args[i + 1].split("::")
            assert f"def {name}(" in (ROOT / path).read_text(), f"no test {args[i + 1]}"
