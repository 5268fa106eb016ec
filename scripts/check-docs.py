"""Checks the README and docs/: every relative link names a file that exists (and a heading of it, for
`#anchor`), and every shell block marked `<!-- ci: run -->` still runs, in order, against a standalone
server (its `localhost:8080` replaced by the server's address; variables carry over from block to
block, as in a reader's terminal).

A block "runs" when it exits 0 and no answer it printed is an error body (`curl -s` exits 0 on a 4xx).

Usage: python3 check-docs.py BASE_URL WORK_DIR   (from the repository root; the blocks run in WORK_DIR)
"""

import re
import subprocess
import sys
from pathlib import Path

BASE_URL, WORK_DIR = sys.argv[1], sys.argv[2]
PAGES = [Path("README.md"), *sorted(Path("docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
RUN = re.compile(r"<!-- ci: run -->\n```sh\n(.*?)```", re.S)


def anchors(page):
    """GitHub's anchors of a page's headings (not the `#` lines of its code blocks): the text lowercased,
    link targets and punctuation dropped, spaces as hyphens, and `-1`, `-2`… after a repeated one."""
    found, seen = set(), {}
    for line in re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M).splitlines():
        heading = re.match(r"^#{1,6} +(.*?)(?: +#+)?$", line)
        if not heading:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1)).strip().lower()
        anchor = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        found.add(anchor if count == 0 else f"{anchor}-{count}")
    return found


broken = []
for page in PAGES:
    text = page.read_text()
    # Code is not prose: links inside fenced blocks are not links.
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for target in LINK.findall(prose):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page.resolve()
        if not linked.exists():
            broken.append(f"{page}: {target}: no such file")
        elif anchor and anchor not in anchors(linked):
            broken.append(f"{page}: {target}: no such heading")
if broken:
    sys.exit("broken links:\n" + "\n".join(broken))
print(f"links: every relative link of {len(PAGES)} pages resolves")

# The README's walk of one message names the files it runs in, at most eight, each once, each there.
ROUTE = re.compile(r"^## One message, route to count\n(.*?)^## ", re.S | re.M)
STEP = re.compile(r"^\d+\. `([^`]+)`", re.M)
route = ROUTE.search(Path("README.md").read_text())
if not route:
    sys.exit("the README has no section 'One message, route to count'")
steps = STEP.findall(route.group(1))
if not 0 < len(steps) <= 8 or len(set(steps)) != len(steps):
    sys.exit(f"the route names {len(steps)} files, {len(set(steps))} of them distinct: at most 8, each once")
missing = [step for step in steps if not Path(step).is_file()]
if missing:
    sys.exit(f"the route names files that do not exist: {missing}")
print(f"route: one message runs in {len(steps)} files, each named once")

blocks = [block for page in PAGES for block in RUN.findall(page.read_text())]
if not blocks:
    sys.exit("no block marked `<!-- ci: run -->`: the documentation shows no command CI can run")
script = "set -euo pipefail\n" + "\n".join(blocks).replace("localhost:8080", BASE_URL.removeprefix("http://"))
result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=WORK_DIR)
print(result.stdout)
if result.returncode != 0:
    sys.exit(f"a documented command failed ({result.returncode}):\n{result.stderr}")
if '"error":' in result.stdout:
    sys.exit("a documented command was answered with an error")
print(f"commands: the {len(blocks)} blocks marked to run ran")
