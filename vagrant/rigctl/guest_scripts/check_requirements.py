"""Runs in the guest venv: are hacontrol's declared requirements installed at satisfying versions?

Narrower than `pip check`, which also judges Debian's own packages seen through --system-site-packages
(on bookworm, python3-gi's missing pycairo fails it) and so says nothing about hacontrol.
"""

import sys
from importlib.metadata import PackageNotFoundError, requires, version

from pip._vendor.packaging.requirements import Requirement

problems = []
for text in requires("hacontrol") or []:
    req = Requirement(text)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # optional extras (test tools) are not installed in the guest
    try:
        installed = version(req.name)
    except PackageNotFoundError:
        problems.append(f"{req.name}: not installed")
        continue
    if not req.specifier.contains(installed, prereleases=True):
        problems.append(f"{req.name} {installed} does not satisfy {req.specifier}")
print("\n".join(problems) or "requirements satisfied")
sys.exit(1 if problems else 0)
