"""The one build step pyproject.toml cannot say: ship the checkout's fixtures/ inside the wheel as
netlab/_fixtures (netlab.fixtures finds it there when no checkout is around). Copying at build time keeps
fixtures/ the one place the data lives, without mapping a data directory onto a package."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

FIXTURES = Path("fixtures")


class BuildPyWithFixtures(build_py):
    """build_py, plus every file under fixtures/ copied to netlab/_fixtures in the build directory."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the checkout's fixtures/ itself
            return
        target = Path(self.build_lib, "netlab", "_fixtures")
        for source in sorted(FIXTURES.rglob("*")):
            if source.is_file():
                destination = target / source.relative_to(FIXTURES)
                self.mkpath(str(destination.parent))
                self.copy_file(str(source), str(destination))


setup(cmdclass={"build_py": BuildPyWithFixtures})
