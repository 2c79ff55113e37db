"""Print pip constraints from pyproject.toml: the project's version specifiers are the
only ones; docker/*/requirements.txt name what each image installs, without versions.

    python constraints.py pyproject.toml > constraints.txt
"""

import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
specs = list(project.get("dependencies", []))
for extra in project.get("optional-dependencies", {}).values():
    specs.extend(extra)
print("\n".join(sorted(set(specs))))
