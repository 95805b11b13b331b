"""Write the README's results section from the latest benchmark outputs (not by hand).

Run from the repo root after the benchmarks:  python -m benchmarks.readme_results
It replaces the text between the results markers in README.md with the Markdown tables
that benchmarks/flat.py, benchmarks/ivf.py and benchmarks/run.py (run_<dataset>.*) wrote,
the plots, and the machine line of each JSON.
"""

from __future__ import annotations

import json
import re

from benchmarks._common import REPO_ROOT

RESULTS = REPO_ROOT / "benchmarks" / "results"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def result_names() -> list[str]:
    """flat, ivf, then one run_<dataset> per dataset the runner has results for."""
    return ["flat", "ivf", *sorted(p.stem for p in RESULTS.glob("run_*.md"))]


def section() -> str:
    parts = []
    for name in result_names():
        md, js = RESULTS / f"{name}.md", RESULTS / f"{name}.json"
        if not md.exists():
            continue
        machine = json.loads(js.read_text())["machine"] if js.exists() else {}
        parts.append(md.read_text().strip().replace("## ", "### "))
        parts.append(f"![{name}](benchmarks/results/{name}.png)")
        if machine:
            parts.append(f"<sub>{machine.get('cpu_model', '?')}, {machine.get('cpu_count')} CPUs, "
                         f"{machine.get('date_utc', '')}, versions: "
                         + ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items() if v)
                         + f"; from benchmarks/results/{name}.json</sub>")
    return "\n\n".join(parts)


def main():
    readme = REPO_ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"README.md lacks the {START} / {END} markers")
    new = re.sub(re.escape(START) + ".*?" + re.escape(END),
                 lambda _: f"{START}\n{section()}\n{END}", text, flags=re.S)
    readme.write_text(new)
    print("README results section updated")


if __name__ == "__main__":
    main()
