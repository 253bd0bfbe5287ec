"""scripts/dvc_plots_template.py: DVC's plots page with its JavaScript inlined, so that `dvc plots
show` loads nothing from the network. Tested with stand-in npm tarballs (no network in tests)."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location(
    "dvc_plots_template", REPO / "scripts" / "dvc_plots_template.py"
)
template = importlib.util.module_from_spec(spec)
spec.loader.exec_module(template)

BIN = Path(sys.executable).parent


def fake_packages(folder: Path, broken: str | None = None) -> Path:
    """The three npm tarballs, each build defining a global the page checks (``broken``: one
    without its build)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (version, member) in template.PACKAGES.items():
        with tarfile.open(folder / f"{name}-{version}.tgz", "w:gz") as tar:
            body = f"window['{name}'] = 1; // '</script>' in a string".encode()
            info = tarfile.TarInfo(member if name != broken else "package/README.md")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return folder


def test_the_page_inlines_each_build_and_keeps_dvcs_placeholder(tmp_path):
    out = tmp_path / "offline.html"
    assert (
        template.main(["--from-dir", str(fake_packages(tmp_path / "npm")), "--out", str(out), "--no-config"])
        == 0
    )
    html = out.read_text()
    for name in template.PACKAGES:
        assert f"window['{name}'] = 1;" in html
    assert "{plot_divs}" in html and "<script src" not in html
    assert "'<\\/script>'" in html  # a closing tag inside a build cannot end its script element


def test_a_tarball_without_its_build_is_a_one_line_error_and_writes_nothing(tmp_path):
    out = tmp_path / "offline.html"
    folder = fake_packages(tmp_path / "npm", broken="vega-lite")
    with pytest.raises(
        SystemExit, match=r"vega-lite-5\.2\.0\.tgz: expected an npm tarball holding package/build"
    ):
        template.main(["--from-dir", str(folder), "--out", str(out), "--no-config"])
    assert not out.exists()


def test_dvc_plots_show_with_the_page_loads_no_script_from_the_network(tmp_path):
    page = tmp_path / "offline.html"
    template.main(["--from-dir", str(fake_packages(tmp_path / "npm")), "--out", str(page), "--no-config"])
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for cmd in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(cmd, cwd=repo, check=True, env=env)
    (repo / "acc.csv").write_text("k,full,grouped\n1,50.0,51.0\n5,80.0,79.0\n")
    (repo / "dvc.yaml").write_text(
        "plots:\n  - acc:\n      x: k\n      y:\n        acc.csv: [full, grouped]\n"
    )
    proc = subprocess.run(
        [str(BIN / "dvc"), "plots", "show", "--html-template", str(page), "-o", "out"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    html = (repo / "out" / "index.html").read_text()
    assert "vegaEmbed('#acc'" in html and "window['vega-embed'] = 1;" in html
    assert "<script src" not in html and "cdn.jsdelivr" not in html
