"""pyproject.toml and environment.yml must pin the same stack."""
import re
import tomllib

from conftest import ROOT


def _pins_pyproject() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.split("==") for d in deps)


def _pins_environment() -> dict[str, str]:
    pins = re.findall(r"^\s*-\s*([A-Za-z0-9_.\-\[\]]+)==([^\s#]+)\s*$", (ROOT / "environment.yml").read_text(), re.M)
    return dict(pins)


def test_every_dependency_is_pinned_exactly():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all("==" in d for d in deps), deps


def test_environment_yml_matches_pyproject():
    assert _pins_environment() == _pins_pyproject()


def test_torch_pin_is_the_local_build():
    pins = _pins_pyproject()
    assert (pins["torch"], pins["torchvision"]) == ("2.14.1", "0.29.1")


def test_the_installed_stack_is_the_pinned_one():
    """What the suite runs on is what the pins say (a stale venv or a package that pulled in another
    torch would fail here, not somewhere obscure)."""
    from importlib.metadata import version
    installed = {name: version(name.split("[")[0]) for name in _pins_pyproject()}
    assert installed == _pins_pyproject()
