"""Packaging checks that run without Slicer (DESIGN.md §5.3).

* The extension's CMake files configure against the project-owned stub
  ``Testing/packaging/stub/SlicerConfig.cmake``, which fails on any listed file
  that does not exist and on missing ``EXTENSION_*`` metadata; the negative tests
  prove that it does.
* ``extension.s4ext`` and the Extensions Index catalog entry
  (``Testing/catalog/SAMMed.json``) are linted and checked against the CMake
  metadata.

Only ``cmake`` (>= 3.16) and a C/C++ compiler are needed (``project()`` enables
C and CXX like a real Slicer extension); the tests skip with a message without them.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = None

REPO = Path(__file__).resolve().parents[2]
STUB = REPO / "Testing" / "packaging" / "stub"
MODULE_DIR = REPO / "SAMMedSlicer"
SERVER_DIR = REPO / "SAMMedServer"
S4EXT = REPO / "extension.s4ext"
CATALOG = REPO / "Testing" / "catalog" / "SAMMed.json"
SCRIPTED_DIR = "lib/Slicer-5.9/qt-scripted-modules"  # as set by the stub

CMAKE = shutil.which("cmake")
HAS_COMPILER = any(shutil.which(c) for c in ("cc", "gcc", "clang")) and any(
    shutil.which(c) for c in ("c++", "g++", "clang++")
)
needs_cmake = pytest.mark.skipif(
    CMAKE is None or not HAS_COMPILER,
    reason="cmake and a C/C++ compiler are needed to configure the extension against the stub Slicer",
)

S4EXT_REQUIRED = (
    "scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage",
    "contributors", "category", "iconurl", "status", "description", "screenshoturls", "enabled",
)
EXTENSION_VARS = (
    "HOMEPAGE", "CATEGORY", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS", "DEPENDS",
)


# --------------------------------------------------------------------------- helpers
def configure(source: Path, build: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CMAKE, "-S", str(source), "-B", str(build), f"-DSlicer_DIR={STUB}"],
        capture_output=True, text=True, timeout=300,
    )


def copy_tree(dst: Path) -> Path:
    """A copy of the files the CMake configure reads (no venvs, caches, VCS)."""
    ignore = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.pyc", ".pytest_cache",
                                    "build", "*.egg-info", "tests")
    dst.mkdir(parents=True)
    for name in ("CMakeLists.txt", "LICENSE.txt", "README.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dst / name)
    for name in ("SAMMedSlicer", "SAMMedServer"):
        shutil.copytree(REPO / name, dst / name, ignore=ignore)
    return dst


def cmake_set_values(cmake_file: Path) -> dict[str, list[str]]:
    """Values of every ``set(NAME ...)`` in a CMake file (quoted strings kept whole)."""
    text = re.sub(r"#[^\n]*", "", cmake_file.read_text())
    values: dict[str, list[str]] = {}
    for m in re.finditer(r"\bset\(\s*([A-Za-z_][A-Za-z0-9_]*)\s+(.*?)\)\s*$", text, re.S | re.M):
        items = re.findall(r'"((?:[^"\\]|\\.)*)"|(\S+)', m.group(2))
        values[m.group(1)] = [q if q else u for q, u in items]
    return values


def expand(value: str, variables: dict[str, list[str]]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: " ".join(variables.get(m.group(1), [m.group(0)])), value)


def extension_metadata() -> dict[str, str]:
    values = cmake_set_values(REPO / "CMakeLists.txt")
    return {k[len("EXTENSION_"):]: " ".join(v) for k, v in values.items() if k.startswith("EXTENSION_")}


def parse_s4ext(path: Path) -> dict[str, str]:
    fields: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        assert key not in fields, f"{path.name}:{lineno}: duplicate key {key!r}"
        fields[key] = value.strip()
    return fields


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    return struct.unpack(">II", data[16:24])


def module_file_lists() -> tuple[list[str], list[str]]:
    values = cmake_set_values(MODULE_DIR / "CMakeLists.txt")
    scripts = [expand(v, values) for v in values["MODULE_PYTHON_SCRIPTS"]]
    resources = [expand(v, values) for v in values["MODULE_PYTHON_RESOURCES"]]
    return scripts, resources


# --------------------------------------------------------------------------- CMake
@pytest.fixture(scope="module")
def configured(tmp_path_factory) -> Path:
    if CMAKE is None or not HAS_COMPILER:
        pytest.skip("cmake and a C/C++ compiler are needed")
    build = tmp_path_factory.mktemp("build")
    result = configure(REPO, build)
    assert result.returncode == 0, (
        "configure against the stub Slicer failed:\n" + result.stdout[-3000:] + result.stderr[-3000:]
    )
    return build


@needs_cmake
def test_configures_against_stub_slicer(configured: Path):
    manifest = (configured / "SlicerStubManifest.txt").read_text().splitlines()
    modules = [line.split()[1] for line in manifest if line.startswith("MODULE ")]
    assert modules == ["SAMMedSlicer", "SAMMedServer"]
    listed = {Path(line.split(" ", 1)[1]) for line in manifest if line.startswith(("SCRIPTS ", "RESOURCES "))}
    assert MODULE_DIR / "SAMMedSlicer.py" in listed
    assert SERVER_DIR / "pyproject.toml" in listed
    assert SERVER_DIR / "sammed_server" / "__init__.py" in listed
    tests = [line for line in manifest if line.startswith("SCRIPT ")]
    assert any(t.endswith("/SAMMedSlicer/SAMMedSlicer.py") for t in tests), "the module's self-test is not registered"


@needs_cmake
def test_install_layout(configured: Path, tmp_path: Path):
    """The module installs like a scripted module; the worker as one pip-installable folder."""
    prefix = tmp_path / "install"
    result = subprocess.run([CMAKE, "--install", str(configured), "--prefix", str(prefix)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    root = prefix / SCRIPTED_DIR
    scripts, resources = module_file_lists()
    for rel in scripts + resources:
        assert (root / rel).is_file(), f"{rel} is not installed"
    server = root / "SAMMedServer"
    for rel in ("pyproject.toml", "constraints.txt", "README.md", "sammed_server/__init__.py"):
        assert (server / rel).is_file(), f"SAMMedServer/{rel} is not installed"
    shipped = {p.relative_to(server).as_posix() for p in server.rglob("*") if p.is_file()}
    on_disk = {p.relative_to(SERVER_DIR).as_posix() for p in (SERVER_DIR / "sammed_server").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
               and not any(part.startswith(".") for part in p.relative_to(SERVER_DIR).parts)}
    assert on_disk <= shipped, f"worker files not shipped: {sorted(on_disk - shipped)[:10]}"
    assert not any(s.startswith("tests/") or "__pycache__" in s for s in shipped)


def test_module_file_list_matches_disk():
    """Every module source and resource on disk is listed in SAMMedSlicer/CMakeLists.txt."""
    scripts, resources = module_file_lists()
    py_on_disk = sorted(p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*.py")
                        if "Testing" not in p.relative_to(MODULE_DIR).parts and "__pycache__" not in p.parts)
    missing = sorted(set(py_on_disk) - set(scripts))
    assert not missing, f"add to MODULE_PYTHON_SCRIPTS in SAMMedSlicer/CMakeLists.txt: {missing}"
    res_on_disk = sorted(p.relative_to(MODULE_DIR).as_posix() for p in (MODULE_DIR / "Resources").rglob("*")
                         if p.is_file() and "Translations" not in p.parts)
    missing = sorted(set(res_on_disk) - set(resources))
    assert not missing, f"add to MODULE_PYTHON_RESOURCES in SAMMedSlicer/CMakeLists.txt: {missing}"
    expected = {"SAMMedSlicer.py"} | {f"SAMMedSlicerLib/{n}.py" for n in
                                      ("__init__", "client", "server_process", "worker", "worker_install",
                                       "background", "prompts", "segments", "session")}
    assert expected <= set(scripts)
    assert {"Resources/Icons/SAMMedSlicer.png", "Resources/UI/SAMMedSlicer.ui",
            "Resources/requirements.txt"} <= set(resources)


@needs_cmake
@pytest.mark.parametrize("victim", [
    "SAMMedSlicer/SAMMedSlicerLib/segments.py",
    "SAMMedSlicer/Resources/UI/SAMMedSlicer.ui",
    "SAMMedServer/pyproject.toml",
])
def test_stub_fails_on_missing_listed_file(tmp_path: Path, victim: str):
    tree = copy_tree(tmp_path / "src")
    (tree / "README.md").touch()  # only the victim may be missing
    (tree / victim).unlink()
    result = configure(tree, tmp_path / "build")
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"configure succeeded although {victim} is missing"
    assert "nonexistent file" in output and Path(victim).name in output, output[-2000:]


@needs_cmake
@pytest.mark.parametrize("var", ["EXTENSION_ICONURL", "EXTENSION_CATEGORY", "EXTENSION_DEPENDS"])
def test_stub_fails_on_missing_metadata(tmp_path: Path, var: str):
    tree = copy_tree(tmp_path / "src")
    (tree / "README.md").touch()
    cml = tree / "CMakeLists.txt"
    text, n = re.subn(rf"^set\({var}\b.*$", "", cml.read_text(), flags=re.M)
    assert n == 1, f"{var} is not set on one line of CMakeLists.txt"
    cml.write_text(text)
    result = configure(tree, tmp_path / "build")
    assert result.returncode != 0
    assert var in result.stdout + result.stderr


@needs_cmake
def test_generated_description_matches_s4ext(configured: Path):
    """extension.s4ext says what the CMake EXTENSION_* variables say."""
    generated = parse_s4ext(configured / "SAMMed.s4ext")
    committed = parse_s4ext(S4EXT)
    for key in ("depends", "build_subdirectory", "homepage", "contributors", "category", "iconurl",
                "status", "description", "screenshoturls", "enabled"):
        assert committed[key] == generated[key], f"extension.s4ext '{key}' differs from CMakeLists.txt"


# --------------------------------------------------------------------------- metadata lint
def test_top_level_cmake_metadata():
    text = (REPO / "CMakeLists.txt").read_text()
    meta = extension_metadata()
    for var in EXTENSION_VARS:
        assert meta.get(var), f"EXTENSION_{var} is not set in CMakeLists.txt"
    assert meta["CATEGORY"] == "Segmentation"
    assert meta["DEPENDS"] == "PyTorch"  # torch for a worker in Slicer's Python, as SlicerMONAIAuto3DSeg
    order = ["cmake_minimum_required(", "project(SAMMed)", "find_package(Slicer REQUIRED)",
             "include(${Slicer_USE_FILE})", "add_subdirectory(SAMMedSlicer)", "add_subdirectory(SAMMedServer)",
             "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"]
    positions = [text.find(s) for s in order]
    assert -1 not in positions, [s for s, p in zip(order, positions) if p == -1]
    assert positions == sorted(positions), "top-level CMakeLists.txt statements are out of order"


def test_s4ext_lint():
    fields = parse_s4ext(S4EXT)
    missing = [k for k in S4EXT_REQUIRED if not fields.get(k)]
    assert not missing, f"extension.s4ext lacks {missing}"
    unknown = sorted(set(fields) - set(S4EXT_REQUIRED))
    assert not unknown, f"extension.s4ext has unknown keys {unknown}"
    assert fields["scm"] in ("git", "svn", "local")
    assert re.fullmatch(r"https://\S+", fields["scmurl"])
    assert re.fullmatch(r"\S+", fields["scmrevision"])
    for key in ("homepage", "iconurl"):
        assert re.fullmatch(r"https?://\S+", fields[key]), key
    assert fields["iconurl"].endswith(".png")
    assert all(re.fullmatch(r"https?://\S+", u) for u in fields["screenshoturls"].split())
    assert fields["enabled"] in ("0", "1")
    assert fields["depends"] == "NA" or all(re.fullmatch(r"[A-Za-z0-9_]+", d) for d in fields["depends"].split())
    meta = extension_metadata()
    for key, var in (("homepage", "HOMEPAGE"), ("category", "CATEGORY"), ("contributors", "CONTRIBUTORS"),
                     ("description", "DESCRIPTION"), ("iconurl", "ICONURL"),
                     ("screenshoturls", "SCREENSHOTURLS"), ("depends", "DEPENDS")):
        assert fields[key] == meta[var], f"extension.s4ext '{key}' != EXTENSION_{var} in CMakeLists.txt"


# The Extensions Index catalog entry schema (Slicer/Schemas/
# slicer-extension-catalog-entry-schema-v1.0.x.json), checked by hand so the test
# needs no jsonschema package: required keys, no other keys, types, ranges.
CATALOG_TYPES = {
    "$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
    "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int,
}
CATALOG_V102_ONLY = {"dicom_support_rule": str}
CATALOG_REQUIRED = ("$schema", "category", "scm_url")


def test_catalog_json_lint():
    entry = json.loads(CATALOG.read_text())
    assert isinstance(entry, dict)
    m = re.fullmatch(r"https://raw\.githubusercontent\.com/Slicer/Slicer/main/Schemas/"
                     r"slicer-extension-catalog-entry-schema-v1\.0\.([0-2])\.json#?", entry.get("$schema", ""))
    assert m, f"unexpected $schema {entry.get('$schema')!r}"
    allowed = dict(CATALOG_TYPES)
    if m.group(1) == "2":
        allowed.update(CATALOG_V102_ONLY)
    for key in CATALOG_REQUIRED:
        assert key in entry, f"catalog entry lacks required {key!r}"
    extra = sorted(set(entry) - set(allowed))
    assert not extra, f"catalog entry has keys the schema forbids (additionalProperties: false): {extra}"
    for key, value in entry.items():
        assert type(value) is allowed[key], f"{key!r} must be {allowed[key].__name__}"
    assert all(isinstance(d, str) for d in entry.get("build_dependencies", []))
    assert entry.get("scm_type", "git") in ("git", "local")
    assert 1 <= entry.get("tier", 1) <= 5
    # agrees with the extension itself
    s4ext = parse_s4ext(S4EXT)
    meta = extension_metadata()
    assert entry["category"] == meta["CATEGORY"] == s4ext["category"]
    assert entry["scm_url"] == s4ext["scmurl"]
    assert entry.get("scm_revision", s4ext["scmrevision"]) == s4ext["scmrevision"]
    assert entry.get("build_subdirectory", ".") == s4ext["build_subdirectory"]
    deps = [] if s4ext["depends"] == "NA" else s4ext["depends"].split()
    assert sorted(entry.get("build_dependencies", [])) == sorted(deps)


# --------------------------------------------------------------------------- resources
def test_icons():
    assert png_size(REPO / "Resources" / "SAMMed.png") == (128, 128)
    png_size(MODULE_DIR / "Resources" / "Icons" / "SAMMedSlicer.png")
    icon_url = extension_metadata()["ICONURL"]
    assert icon_url.endswith("/Resources/SAMMed.png"), "EXTENSION_ICONURL should point at Resources/SAMMed.png"


def test_screenshots_exist():
    """Every screenshot URL names a PNG committed in this repository (the Extensions Index fetches each one)."""
    urls = extension_metadata()["SCREENSHOTURLS"].split()
    assert urls
    for url in urls:
        match = re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(\S+\.png)", url)
        assert match, f"screenshot URL {url} is not a PNG on the main branch of the extension's repository"
        path = REPO / match.group(1)
        assert path.is_file(), f"{path.relative_to(REPO)} (in EXTENSION_SCREENSHOTURLS) is not committed"
        width, height = png_size(path)
        assert width >= 400 and height >= 300, f"{path.name} is {width}x{height}: too small to show anything"


def test_license_is_apache2():
    text = (REPO / "LICENSE.txt").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text


@pytest.mark.skipif(tomllib is None, reason="tomllib needs Python 3.11")
def test_requirements_mirror_worker_dependencies():
    def norm(req: str) -> str:
        return re.sub(r"\s+", "", req).lower().replace("_", "-")

    project = tomllib.loads((SERVER_DIR / "pyproject.toml").read_text())["project"]
    lines = (MODULE_DIR / "Resources" / "requirements.txt").read_text().splitlines()
    listed = sorted(norm(s) for s in (line.split("#", 1)[0] for line in lines) if s.strip())
    expected = sorted(norm(d) for d in project["dependencies"])
    assert listed == expected, (
        "SAMMedSlicer/Resources/requirements.txt must mirror [project].dependencies of "
        "SAMMedServer/pyproject.toml"
    )


def test_widget_uses_only_widgets_of_the_ui_file():
    """Every ``self.ui.<name>`` in the module file is a widget named in the .ui (a typo would fail only in Slicer)."""
    import re
    import xml.etree.ElementTree as ET

    module = (REPO / "SAMMedSlicer" / "SAMMedSlicer.py").read_text()
    used = set(re.findall(r"self\.ui\.(\w+)", module))
    tree = ET.parse(REPO / "SAMMedSlicer" / "Resources" / "UI" / "SAMMedSlicer.ui")
    named = {widget.get("name") for widget in tree.iter("widget")}
    assert used and used <= named, f"not in the .ui: {sorted(used - named)}"
