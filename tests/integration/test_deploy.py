"""What a fresh machine and the deploy files need: the packages `make deps` installs, the load
balancer's policy, the container's listen address. These read the files (no container engine
runs here) and run the node the way the image does."""
import os
import re

from harness import check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read(rel):
    with open(os.path.join(ROOT, rel)) as f:
        return f.read()


def _make_var(text, name):
    m = re.search(r"^" + name + r"\s*[:?]?=\s*((?:.*\\\n)*.*)$", text, re.M)
    check(m, f"Makefile has no {name}")
    return m.group(1).replace("\\\n", " ").split()


def test_deps_names_what_a_bare_debian_lacks():
    """A bare Debian 12 with only make: the compiler, pkg-config and the test tools are named,
    not left to arrive as other packages' dependencies."""
    pkgs = set(_make_var(_read("Makefile"), "DEB_PKGS"))
    missing = {"build-essential", "pkg-config", "python3", "python3-websockets", "openssl",
               "redis-server", "redis-tools", "haproxy"} - pkgs
    check(not missing, f"DEB_PKGS does not name {sorted(missing)}")

