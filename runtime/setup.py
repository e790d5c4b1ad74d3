"""Build hook of the ``satcompress-runtime`` distribution (metadata in pyproject.toml).

Only the torch-free modules of the shared source tree go in the wheel: all of
``satcompress.runtime``, and from its parent packages only what it imports (the lazy
``satcompress/__init__.py``, ``card.py``; ``utils``: ``io``, ``cpu``, ``lazy``). setuptools
selects whole packages, hence this filter on their modules.
"""

from setuptools import setup
from setuptools.command.build_py import build_py

#: package -> the modules of it to ship (None: all of them)
MODULES = {
    "satcompress": {"__init__", "card"},
    "satcompress.utils": {"__init__", "io", "cpu", "lazy"},
    "satcompress.runtime": None,
}


class TorchFreeModules(build_py):
    """``build_py`` that leaves out the modules of the full package."""

    def find_package_modules(self, package, package_dir):  # noqa: D102
        modules = super().find_package_modules(package, package_dir)
        keep = MODULES.get(package)
        return [m for m in modules if keep is None or m[1] in keep]


setup(cmdclass={"build_py": TorchFreeModules})
