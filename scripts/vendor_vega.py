"""Rebuild vendor/vega/dvc-plots.html: DVC's plots page with Vega, Vega-Lite and vega-embed inlined.

`dvc plots show` writes a page that loads these three libraries from a CDN, so it stays
blank without internet. .dvc/config points DVC at this template instead (plots.html_template);
it carries the libraries inline, with their licences, and no {scripts} placeholder, so DVC
adds no CDN tags. Run it to move to other versions (needs npm and the npm registry):

    python scripts/vendor_vega.py            # the pinned versions below
    python scripts/vendor_vega.py --check    # exit 1 if the committed page differs

DVC writes Vega-Lite v5 specs; vega 5, vega-lite 5 and vega-embed 6 are the majors it uses.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGES = (("vega", "5.33.1"), ("vega-lite", "5.23.0"), ("vega-embed", "6.29.0"))
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "vendor" / "vega" / "dvc-plots.html"
LICENSES = ROOT / "vendor" / "vega" / "LICENSES.txt"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Vega, Vega-Lite and vega-embed inlined (no CDN): see vendor/vega/LICENSES.txt and
         scripts/vendor_vega.py. Versions: VERSIONS -->
SCRIPTS
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def fetch(name: str, version: str, tmp: Path) -> tuple[str, str]:
    """(minified build, LICENSE text or "") of one package, via `npm pack`."""
    subprocess.run(["npm", "pack", "-q", f"{name}@{version}"], cwd=tmp, check=True, capture_output=True)
    with tarfile.open(tmp / f"{name}-{version}.tgz") as tar:
        js = tar.extractfile(f"package/build/{name}.min.js")
        assert js is not None
        code = js.read().decode()
        try:
            lic = tar.extractfile("package/LICENSE")
            licence = lic.read().decode() if lic is not None else ""
        except KeyError:
            licence = ""
    # Drop the source-map comment: the page must ask nothing from the network.
    code = "\n".join(line for line in code.splitlines() if not line.startswith("//# sourceMappingURL="))
    for bad in ("</script", "{plot_divs}", "{scripts}", "{refresh_tag}"):
        if bad in code:
            raise SystemExit(f"{name}@{version} contains {bad!r}: it cannot be inlined in the DVC template")
    return code, licence


def build() -> tuple[str, str]:
    """The page and the licences file."""
    scripts, licences = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, version in PACKAGES:
            code, licence = fetch(name, version, Path(tmp))
            scripts.append(
                f'    <script type="text/javascript">/* {name}@{version} (BSD-3-Clause) */\n{code}\n    </script>'
            )
            licences.append(f"== {name}@{version} (npm), BSD-3-Clause ==\n\n{licence or VEGA_LICENSE}\n")
    page = PAGE.replace("SCRIPTS", "\n".join(scripts)).replace("VERSIONS", ", ".join(f"{n}@{v}" for n, v in PACKAGES))
    return page, "\n".join(licences)


# The vega package ships no LICENSE file in its npm tarball; this is the licence its
# package.json names (BSD-3-Clause) with the copyright of its repository (vega/vega).
# vega.min.js bundles d3 modules, published under the ISC licence by Mike Bostock.
VEGA_LICENSE = """Copyright (c) 2015-2023, University of Washington Interactive Data Lab
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

3. Neither the name of the copyright holder nor the names of its contributors
   may be used to endorse or promote products derived from this software
   without specific prior written permission.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT OWNER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.

Bundled in vega.min.js: d3 modules (d3-array, d3-scale, d3-shape, ...),
Copyright Mike Bostock, ISC licence: Permission to use, copy, modify, and/or
distribute this software for any purpose with or without fee is hereby granted,
provided that the above copyright notice and this permission notice appear in
all copies. THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL
WARRANTIES WITH REGARD TO THIS SOFTWARE.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = parser.parse_args(argv)
    page, licences = build()
    if args.check:
        same = OUT.read_text() == page and LICENSES.read_text() == licences
        print("vendor/vega is up to date" if same else "vendor/vega differs: run python scripts/vendor_vega.py")
        return 0 if same else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(page)
    LICENSES.write_text(licences)
    print(f"wrote {OUT} ({len(page) // 1024} KiB) and {LICENSES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
