#!/usr/bin/env python
"""Check the Snakemake report as a reader's browser shows it (`make report`, then this script).

Reads the results and categories the report embeds and checks that:

- the landing page has the workflow's description (``workflow/report/workflow.rst``);
- every section ("N. name") has a distinct number and at least one item, and every item has a
  caption, a one-line ``shows`` label (Snakemake lists labels beside each item; the caption opens
  on a click) and a non-empty embedded file that a browser can open (a data URL under Chromium's
  2 MiB limit, above which its pane stays blank; a PNG that decodes; an HTML page with content);

then, with Debian's headless Chromium (network blocked), renders the report, saves a screenshot
of its landing page, checks the rendered page names every section, opens each section as a click
on the menu does and checks its items are listed, and renders every embedded HTML item (the
formatted tables and the notebook) on its own, checking it shows text.

Prints a JSON summary; exits 1 with a line per failed check. Usage:
``python scripts/check_report.py [reports/report.html] [--screenshot reports/report.png]``.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

DATA_URL_LIMIT = 2 * 1024 * 1024  # Chromium's longest data URL for a frame
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: nothing may come from the network
    "--virtual-time-budget=8000",
]


def embedded(html: str, name: str) -> object:
    """The JSON a Snakemake report assigns to ``var <name>`` in its own script tag."""
    match = re.search(rf'<script id="[\w-]+">\s*var {name} = (.*?);\s*</script>', html, re.S)
    if match is None:
        raise ValueError(
            f"report: expected a 'var {name} = ...' script, found none (not a Snakemake report?)"
        )
    return json.loads(match.group(1))


class _Text(HTMLParser):
    """The visible text of an HTML page (no script or style)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag):
        self._skip -= tag in ("script", "style") and self._skip > 0

    def handle_data(self, data):
        if not self._skip and data.strip():
            self.parts.append(data.strip())


def visible_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    return " ".join(parser.parts)


def decode(uri: str) -> bytes:
    head, _, payload = uri.partition(",")
    return base64.b64decode(payload) if head.endswith(";base64") else payload.encode()


def check_items(html: str) -> tuple[dict, list[str], dict[str, bytes], dict[str, list[str]]]:
    """Checks on the embedded data alone: (summary, failures, the HTML items' bytes by name, each
    section's items by their ``shows`` label)."""
    results = embedded(html, "results")
    categories = embedded(html, "categories")
    description = embedded(html, "workflow_desc")
    failures = []
    if not visible_text(str(description or "")):
        failures.append(
            "landing page: expected the workflow description (workflow/report/workflow.rst), found none"
        )
    numbers = {}
    for cat in categories:
        number = re.match(r"(\d+)\. ", cat)
        if number is None:
            failures.append(f"section '{cat}': expected a name 'N. title', found none")
        elif number.group(1) in numbers:
            failures.append(f"sections '{numbers[number.group(1)]}' and '{cat}': expected distinct numbers")
        else:
            numbers[number.group(1)] = cat
    html_items = {}
    sections = {}
    for cat, subcats in categories.items():
        paths = [p for items in subcats.values() for p in items]
        for subcat, items in subcats.items():
            sections[(cat, subcat)] = sorted(
                {(results[p].get("labels") or {}).get("shows") or results[p]["name"] for p in items}
            )
        if not paths:
            failures.append(f"section '{cat}': expected at least one item, found none")
        for path in paths:
            res = results[path]
            name = f"{cat} / {res['name']}"
            if not visible_text(res.get("caption") or ""):
                failures.append(f"{name}: expected a caption, found none")
            if not (res.get("labels") or {}).get("shows"):
                failures.append(
                    f"{name}: expected a 'shows' label (its one-line caption in the list), found none"
                )
            uri = res.get("data_uri") or ""
            if len(uri) >= DATA_URL_LIMIT:
                failures.append(
                    f"{name}: expected a data URL under {DATA_URL_LIMIT} characters, found {len(uri)}"
                )
            body = decode(uri) if uri.startswith("data:") else b""
            if not body:
                failures.append(f"{name}: expected an embedded file, found none")
            elif res["mime_type"] == "image/png" and not body.startswith(b"\x89PNG"):
                failures.append(f"{name}: expected a PNG, found {body[:8]!r}")
            elif res["mime_type"] == "text/html":
                html_items[name] = body
    for cat, subcats in categories.items():
        for subcat, paths in subcats.items():
            label = toggle_label([results[p].get("labels") or {} for p in paths])
            if label:
                failures.append(
                    f"section '{cat}' ({subcat}): expected no label that Snakemake turns into a toggle, "
                    f"found '{label}' (two values, each on half the items; the section fails to open)"
                )
    summary = {
        "sections": {cat: sum(len(p) for p in subcats.values()) for cat, subcats in categories.items()},
        "items": sum(len(p) for subcats in categories.values() for p in subcats.values()),
        "html_items": len(html_items),
    }
    return summary, failures, html_items, sections


def toggle_label(labels: list[dict]) -> str | None:
    """The label of a list of items that Snakemake's report shows as a toggle (its rule: not the
    first label, exactly two values, each on half the items), which breaks the list unless the
    items pair up; None if there is none."""
    order: dict[str, int] = {}
    for item in labels:
        for i, key in enumerate(item):
            order.setdefault(key, i)
    keys = sorted(order, key=order.get)
    for key in keys[1:]:
        values = [item[key] for item in labels if key in item]
        unique = set(values)
        if len(unique) == 2 and all(values.count(v) * 2 == len(labels) for v in unique):
            return key
    return None


def chromium() -> str | None:
    return next((c for c in ("chromium", "chromium-browser", "google-chrome") if shutil.which(c)), None)


def render(browser: str, path: Path, screenshot: Path | None = None) -> str:
    """The DOM of ``path`` after its scripts ran (and a screenshot when asked)."""
    base = [browser, *CHROMIUM_FLAGS]
    if screenshot is not None:
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [*base, "--window-size=1400,1000", f"--screenshot={screenshot}", path.resolve().as_uri()],
            capture_output=True,
            timeout=120,
            check=True,
        )
    proc = subprocess.run(
        [*base, "--dump-dom", path.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return proc.stdout


def check_rendered(report: Path, screenshot: Path, html_items: dict[str, bytes], sections) -> list[str]:
    browser = chromium()
    if browser is None:
        return ["chromium: expected Debian's chromium (apt-get install chromium), found none"]
    failures = []
    page = visible_text(render(browser, report, screenshot))
    if "Loading Snakemake Report" in page and len(page) < 200:
        failures.append("report: expected the rendered app, found only its loading screen")
    for cat in sorted({cat for cat, _ in sections}):
        if cat not in page:
            failures.append(f"report: expected section '{cat}' in the rendered menu, found none")
    with tempfile.TemporaryDirectory() as tmp:
        # each section as a reader opens it: a click on its name in the menu, then its list of items
        html = report.read_text()
        end = html.rfind("</body>")
        for i, ((cat, subcat), shows) in enumerate(sorted(sections.items())):
            # Snakemake lists a section's sub-sections first, unless it has only its default one
            names = [cat] if subcat == "Other" else [cat, subcat]
            click = "".join(
                "<script>setTimeout(() => { const found = [...document.querySelectorAll('a, li, span, div')]"
                f".filter(e => e.textContent.trim() === {json.dumps(name)});"
                f" found[found.length - 1]?.click(); }}, {1500 * (j + 1)})</script>"
                for j, name in enumerate(names)
            )
            opened = Path(tmp) / f"section{i}.html"
            opened.write_text(html[:end] + click + html[end:])
            page = visible_text(render(browser, opened))
            missing = [label for label in shows if label not in page]
            if missing:
                where = cat if subcat == "Other" else f"{cat} / {subcat}"
                failures.append(
                    f"section '{where}': expected its items listed once opened, missing {missing}"
                )
        for i, (name, body) in enumerate(sorted(html_items.items())):
            item = Path(tmp) / f"item{i}.html"
            item.write_bytes(body)
            if len(visible_text(render(browser, item))) < 20:
                failures.append(f"{name}: expected text once rendered, found none")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", nargs="?", default="reports/report.html")
    parser.add_argument("--screenshot", default="reports/report.png", help="the landing page, as PNG")
    parser.add_argument("--no-browser", action="store_true", help="check the embedded data only")
    args = parser.parse_args(argv)
    report = Path(args.report)
    if not report.is_file():
        print(f"{report}: expected a Snakemake report (make report), found nothing", file=sys.stderr)
        return 1
    try:
        summary, failures, html_items, sections = check_items(report.read_text())
    except ValueError as err:
        print(f"{report}: {err}", file=sys.stderr)
        return 1
    if not args.no_browser:
        failures += check_rendered(report, Path(args.screenshot), html_items, sections)
        summary["screenshot"] = args.screenshot
    summary["failures"] = failures
    print(json.dumps(summary, indent=1))
    for line in failures:
        print(line, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
