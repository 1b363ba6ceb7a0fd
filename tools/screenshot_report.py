"""Open a run report in headless Chromium (Debian's `chromium`, driven by Playwright): write a
full-page PNG a person can look at, and say what the page did (console errors, plots per section).

    python tools/screenshot_report.py                       # the quickstart run: out/quickstart
    python tools/screenshot_report.py OUT --png report.png  # any finished run

Builds `OUT/report.html` first (gristmill report). The browser is the system's (`apt-get install
chromium`); Playwright's own browser download is never used. The test suite uses `render` too.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str | None:
    for name in CHROMIUM_NAMES:
        p = shutil.which(name)
        if p:
            return p
    return None


def render(html_path: str, png_path: str | None = None, width: int = 1366, height: int = 900) -> dict:
    """Load the page from file:// (offline), collect console errors and uncaught exceptions,
    count each section's rendered plot elements; optionally write a full-page screenshot."""
    from playwright.sync_api import sync_playwright

    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError("chromium not found: apt-get install -y chromium")
    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox refuses to start
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.set_default_timeout(180_000)  # a loaded 2-core machine parses 5 MB of JS slowly
            page.goto("file://" + os.path.abspath(html_path), wait_until="load")
            sections = page.evaluate("""() => Object.fromEntries(Array.from(document.querySelectorAll('section'))
                .map(s => [s.id, {plots: s.querySelectorAll('div.plot').length,
                                  rendered: s.querySelectorAll('div.plot .main-svg').length,
                                  drawn: Array.from(s.querySelectorAll('div.plot')).filter(
                                      d => d.querySelector('.main-svg') && d.getBoundingClientRect().height > 50).length,
                                  empty: s.querySelectorAll('.empty').length}]))""")
            if png_path:
                page.screenshot(path=png_path, full_page=True)
        finally:
            browser.close()
    external = [u for u in requests if not u.startswith(("file://", "data:", "about:"))]
    return {"errors": errors, "sections": sections, "external_requests": external}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="out/quickstart", help="a finished run's output dir")
    ap.add_argument("--png", help="screenshot path (default: OUT/report.png)")
    args = ap.parse_args(argv)
    if not os.path.isfile(os.path.join(args.out, "stats.json")):
        print(f"{args.out}/stats.json not found: run `make quickstart` (or gristmill run) first", file=sys.stderr)
        return 2
    from pipeline.report import write_report

    html_path = write_report(args.out)
    png = args.png or os.path.join(args.out, "report.png")
    res = render(html_path, png)
    for sid, s in res["sections"].items():
        print(f"  {sid:<8} {s['drawn']}/{s['plots']} plots drawn" + ("  (no data in this run)" if s["empty"] else ""))
    print(f"wrote {png} from {html_path}; console errors: {len(res['errors'])}; "
          f"external requests: {len(res['external_requests'])}")
    for e in res["errors"]:
        print("  " + e)
    return 1 if res["errors"] or res["external_requests"] else 0


if __name__ == "__main__":
    sys.exit(main())
