"""Print pyproject.toml's runtime dependencies for the image build, with TF's extra (e.g. [and-cuda])."""

import re
import sys

import tomllib

pyproject, extra = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
with open(pyproject, "rb") as f:
    for dependency in tomllib.load(f)["project"]["dependencies"]:
        print(re.sub(r"^tensorflow(?=[<>=~ ])", f"tensorflow{extra}", dependency))
