"""mkdocs hooks of the site (mkdocs.yml `hooks:`).

The performance page shows the benchmark results as `make bench` wrote them:
`benchmarks/results/` stays the one source of the numbers and plots. The hook

1. adds each PNG plot of `benchmarks/results/` to the site as `benchmarks/<name>.png` (no copy in
   `docs/`, no symlink), and
2. replaces a line `<!-- include benchmarks/results/NAME.md -->` of a page with that file, its
   headings one level deeper and its plot references pointing at the site's copies.

The API reference renders the package's docstrings, which are Google style with a few
reStructuredText habits (``:class:`X` ``, ``Example::``) that Markdown shows verbatim:
3. the role prefix is dropped (``:class:<code>X</code>`` reads ``<code>X</code>``), and a
   paragraph's closing ``::`` becomes ``:``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
INCLUDE = re.compile(r"^<!-- include benchmarks/results/(?P<name>[A-Z_]+\.md) -->$", re.M)
PLOT = re.compile(r"\]\((?P<name>[a-z_]+\.png)\)")
RST_ROLE = re.compile(r":(?:class|meth|func|attr|exc|mod|data|obj):(?=<code>)")


def on_files(files: Files, config: Any) -> Files:
    for plot in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"benchmarks/{plot.name}", abs_src_path=str(plot)))
    return files


def _included(match: re.Match[str]) -> str:
    text = (RESULTS / match["name"]).read_text()
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and line.startswith("#"):
            line = "#" + line
        lines.append(line)
    return PLOT.sub(r"](benchmarks/\g<name>)", "\n".join(lines))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    return INCLUDE.sub(_included, markdown)


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    if not page.file.src_uri.startswith("api/"):
        return html
    return RST_ROLE.sub("", html).replace("::</p>", ":</p>")
