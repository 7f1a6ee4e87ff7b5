#!/usr/bin/env python3
"""Write .dvc/plots/offline.html: DVC's plots page with vega, vega-lite and vega-embed inlined, so
`dvc plots show` renders every plot without the internet (DVC's own page loads them from a CDN).

The three libraries come from the npm registry (`npm pack`, versions below: those DVC's renderer
names), with their licences. Run again after changing a version; commit the template.
    python scripts/plots_template.py            # needs npm and the registry, not the CDN
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {  # npm package -> (version, file in the tarball): the versions dvc-render 1.x uses
    "vega": ("5.20.2", "package/build/vega.min.js"),
    "vega-lite": ("5.2.0", "package/build/vega-lite.min.js"),
    "vega-embed": ("6.18.2", "package/build/vega-embed.min.js"),
}
TEMPLATE = Path(__file__).resolve().parents[1] / ".dvc" / "plots" / "offline.html"
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC plots</title>
    <!-- vega, vega-lite and vega-embed from the npm registry, inlined by scripts/plots_template.py:
         the page needs no network. No scripts placeholder: DVC would add its CDN links there. -->
{libraries}
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
        img { max-width: 100%; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def library(name: str, version: str, member: str, folder: Path) -> str:
    subprocess.run(["npm", "pack", "--silent", f"{name}@{version}"], cwd=folder, check=True, capture_output=True)
    with tarfile.open(folder / f"{name}-{version}.tgz") as tar:
        code = tar.extractfile(member).read().decode("utf-8")
        licence = tar.extractfile("package/LICENSE").read().decode("utf-8")
    code = "\n".join(line for line in code.splitlines() if not line.startswith("//# sourceMappingURL="))
    if "</script" in code.lower():
        raise SystemExit(f"{name}: the code holds '</script', which would end the inline script")
    licence = licence.replace("*/", "* /")
    return f'<script type="text/javascript">\n/*! {name}@{version} (npm), licence:\n{licence}*/\n{code}\n</script>'


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        scripts = [library(name, version, member, Path(tmp)) for name, (version, member) in PACKAGES.items()]
    page = PAGE.replace("{libraries}", "\n".join(scripts))
    for placeholder in ("{scripts}", "{plot_divs}", "{refresh_tag}"):
        if page.count(placeholder) != (0 if placeholder == "{scripts}" else 1):
            raise SystemExit(f"{placeholder} occurs {page.count(placeholder)} times in the page")
    TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
    TEMPLATE.write_text(page, encoding="utf-8")
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
