"""The npm packages the JavaScript tests use, installed on demand into one directory outside the
source tree (default build/js; RELAY_JS_DEPS overrides), at the versions tests/js/package.json pins.

ensure("ws") returns that directory (its node_modules/ws is there), or raises Missing with the
reason (no node, no npm, the registry not reachable), for the caller to skip with a clear message.
"""
import json
import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class Missing(Exception):
    pass


def deps_dir():
    return os.path.abspath(os.environ.get("RELAY_JS_DEPS") or os.path.join(ROOT, "build", "js"))


def pinned(name):
    with open(os.path.join(HERE, "package.json")) as f:
        return json.load(f)["devDependencies"][name]


def installed_version(d, name):
    try:
        with open(os.path.join(d, "node_modules", name, "package.json")) as f:
            return json.load(f).get("version")
    except (OSError, ValueError):
        return None


def node_bin():
    node = shutil.which("node")
    if not node:
        raise Missing("node is not installed (apt-get install nodejs)")
    return node


def ensure(name, timeout=240):
    """Installs name at its pinned version unless it is there already; returns deps_dir()."""
    node_bin()
    d = deps_dir()
    want = pinned(name)
    if installed_version(d, name) == want:
        return d
    npm = shutil.which("npm")
    if not npm:
        raise Missing(f"npm is not installed, cannot install {name}@{want}")
    os.makedirs(d, exist_ok=True)
    # d's package.json lists what is there plus name, so that npm keeps the others installed
    pkg = os.path.join(d, "package.json")
    try:
        with open(pkg) as f:
            deps = json.load(f).get("devDependencies", {})
    except (OSError, ValueError):
        deps = {}
    deps[name] = want
    with open(pkg, "w") as f:
        json.dump({"name": "relay-js-test-deps", "private": True, "devDependencies": deps}, f, indent=2)
    try:
        p = subprocess.run([npm, "install", "--prefix", d, "--no-audit", "--no-fund", "--no-package-lock",
                            "--loglevel=error"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                           env=dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1"))
    except subprocess.TimeoutExpired:
        raise Missing(f"npm install {name}@{want} took over {timeout}s")
    if p.returncode != 0 or installed_version(d, name) != want:
        out = p.stdout.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise Missing(f"npm install {name}@{want} failed: " + " | ".join(out))
    return d
