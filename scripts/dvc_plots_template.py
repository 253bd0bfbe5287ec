"""Make `dvc plots show` work offline: write DVC's plots page with Vega, Vega-Lite and vega-embed
inlined, and point DVC at it.

DVC's own page loads the three libraries from a CDN, so without network its data-series plots are
blank. This script takes them from the npm registry (`npm pack`, which checks each package's
integrity; the versions DVC's page names), or from ``--from-dir`` (the three ``.tgz`` files, for a
machine without network), writes ``.dvc/plots/offline.html`` (ignored by git) with their minified
builds inlined, and runs ``dvc config --local plots.html_template plots/offline.html``. The image
plots (the report's figures) render without it. ``scripts/setup.sh`` calls it when ``npm`` is
there; run it by hand otherwise. Nothing is written unless all three packages were read.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the versions DVC's default page loads (dvc_render), and each package's minified browser build
PACKAGES = {
    "vega": ("5.20.2", "package/build/vega.min.js"),
    "vega-lite": ("5.2.0", "package/build/vega-lite.min.js"),
    "vega-embed": ("6.18.2", "package/build/vega-embed.min.js"),
}
TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    <title>DVC Plot</title>
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""
OUT = ROOT / ".dvc" / "plots" / "offline.html"


def read_build(tgz: Path, member: str) -> str:
    """The text of ``member`` in the npm tarball ``tgz``; a one-line error naming the file."""
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            f = tar.extractfile(member)
            if f is None:
                raise KeyError(member)
            return io.TextIOWrapper(f, encoding="utf-8").read()
    except (OSError, tarfile.TarError, KeyError) as err:
        raise SystemExit(
            f"dvc_plots_template: {tgz}: expected an npm tarball holding {member}, found {err}"
        ) from err


def page(builds: dict[str, str]) -> str:
    """The plots page with each build inlined (``</script>`` inside one is escaped)."""
    safe = {name: js.replace("</script", "<\\/script") for name, js in builds.items()}
    scripts = "\n".join(
        f'    <script type="text/javascript">/* {name} */\n{js}\n    </script>' for name, js in safe.items()
    )
    return TEMPLATE.format(scripts=scripts)


def fetch(dest: Path) -> None:
    """``npm pack`` the pinned packages into ``dest``."""
    specs = [f"{name}@{version}" for name, (version, _) in PACKAGES.items()]
    proc = subprocess.run(
        ["npm", "pack", "--silent", "--pack-destination", str(dest), *specs],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise SystemExit(f"dvc_plots_template: npm pack {' '.join(specs)} failed: {last}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-dir", help="a folder with the three .tgz files (no npm, no network)")
    parser.add_argument("--out", default=str(OUT), help="the page to write")
    parser.add_argument("--no-config", action="store_true", help="do not run `dvc config --local`")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.from_dir) if args.from_dir else Path(tmp)
        if not args.from_dir:
            fetch(folder)
        builds = {
            name: read_build(folder / f"{name}-{version}.tgz", member)
            for name, (version, member) in PACKAGES.items()
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(page(builds), encoding="utf-8")
    tmp_out.replace(out)
    if not args.no_config:
        dvc_dir = (ROOT / ".dvc").resolve()
        where = out.resolve()  # DVC reads a relative path from .dvc/
        rel = where.relative_to(dvc_dir) if where.is_relative_to(dvc_dir) else where
        dvc = Path(sys.executable).parent / "dvc"  # the environment's, also when not activated
        cmd = [str(dvc) if dvc.exists() else "dvc", "config", "--local", "plots.html_template", str(rel)]
        subprocess.run(cmd, cwd=ROOT, check=True)
    print(
        f"dvc_plots_template: wrote {out} ({out.stat().st_size // 1024} KiB); `dvc plots show` works offline"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
