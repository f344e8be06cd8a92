"""The reference docs follow the code's tables: every config key of common/rl_config.c in
docs/configuration.md, every error code of core/rl_errors.h with its close code in docs/protocol.md."""
import os
import re

from harness import check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def _table(src, name):
    m = re.search(r"static const cfg_field %s\[\] = \{(.*?)\n\};" % name, src, re.S)
    check(m is not None, f"no table {name} in rl_config.c")
    return re.findall(r'\{"([a-z_]+)", F_', m.group(1))


def test_configuration_md_has_every_key():
    src = _read("common", "rl_config.c")
    doc = _read("docs", "configuration.md")
    keys = _table(src, "param_fields") + _table(src, "node_fields")
    keys += ["auth." + k for k in _table(src, "auth_fields")]
    keys += ["tls." + k for k in _table(src, "tls_fields")]
    keys += re.findall(r'\{"(RELAY_[A-Z_]+)", [a-z_]+_fields', src)
    keys += ["RELAY_LOG_LEVEL", "version", "namespace", "entries", "command_prefix", "auto_start",
             "default_host", "source", "modules", "method"]
    for kind in re.findall(r'^\s+\{"([a-z.]+)", (?:NULL|entry_[a-z_]+)\},$', src, re.M):
        keys.append(kind)
    missing = [k for k in keys if f"`{k}`" not in doc and f"`meta.{k}`" not in doc]
    check(not missing, f"docs/configuration.md does not describe: {missing}")


def test_protocol_md_has_every_error_and_close_code():
    errs = re.findall(r'X\([A-Z_]+, "([a-z_]+)", (\d+),', _read("core", "rl_errors.h"))
    check(len(errs) >= 10, f"read only {errs} from rl_errors.h")
    doc = _read("docs", "protocol.md")
    for code, close in errs:
        row = [ln for ln in doc.splitlines() if ln.startswith(f"| `{code}` |")]
        check(len(row) == 1, f"docs/protocol.md has {len(row)} error-table rows for {code}")
        want = "stays open" if close == "0" else f"closed, {close}"
        check(row[0].rstrip().endswith(f"| {want} |"), f"{code}: row {row[0]!r}, want {want!r}")
        if close != "0":
            check(re.search(r"^\| %s \|" % close, doc, re.M), f"close code {close} has no row")


def test_readme_links_the_references():
    readme = _read("README.md")
    for d in ("docs/protocol.md", "docs/configuration.md"):
        check(f"]({d})" in readme, f"README does not link {d}")
