"""Exits 0 when this interpreter has the official SDK at exactly the versions pinned in
requirements.txt (beside this file) and its modules import; else prints why and exits 1.

Used by setup-venv.sh (is the venv already right?) and by tests/sdk_compat.rs (is it usable?).
"""
import importlib.metadata as md
import os
import sys

REQUIREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")

for line in open(REQUIREMENTS):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, version = line.split("==")
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(f"{name} is not installed ({version} pinned)")
    if have != version:
        sys.exit(f"{name} {have} is installed, {version} pinned")

try:
    import huaweicloudsdkas.v1  # noqa: F401
    import huaweicloudsdkcore  # noqa: F401
    import huaweicloudsdkelb.v3  # noqa: F401
except ImportError as e:
    sys.exit(f"the pinned SDK does not import: {e}")
