#!/usr/bin/env python
"""Check the offline docs preview (`python tools/docs.py preview`) in headless Chromium.

    python tools/browser_test.py [--preview _preview] [--page testmod.html ...]

Serves the preview folder on 127.0.0.1, opens every page listed in `_preview/manifest.json`
in headless Chromium (Debian's `chromium` + `chromium-driver`, driven by `selenium`), and for
each page checks that:

- it loads with no missing file (HTTP 404) and no resource from outside the preview;
- no output cell shows a traceback or an error (error outputs, `...Error:` lines);
- every `<img>` has loaded (`naturalWidth > 0`);
- on pages with TeX maths, MathJax typeset it (`.MathJax_CHTML` elements, no MathJax
  error, no `$$` left in the text);
- on API pages (notebooks with `#| default_exp`), `show_doc` API docs are present: a heading
  and the signature with its parameters (nbdev 2.4.14 renders them as a commented `def`
  block) or a parameter table;

- every public symbol is documented once (no show_doc heading twice), no signature holds a raw markdown link,
  no id is repeated, every link to an anchor of this page or of another checked page finds it;
- no shown code line runs past its column, and no output shows a temporary path (`/tmp/...`);

and saves a screenshot of each page to `_preview/screenshots/`. One check per page; the last
line of output is `N passed, M failed`, and the exit status is 1 when a check failed
(2 when the browser or the preview is missing). Installs nothing.
"""
import argparse, base64, functools, importlib.util, json, posixpath, shutil, sys, threading, time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from chromium import start_chromium, BrowserMissing

REPO = Path(__file__).resolve().parent.parent
WIDTH, HEIGHT, MAX_SHOT_HEIGHT = 1280, 900, 12000
# checks that are reported but do not fail a page (yet): the prefixes of their messages
ADVISORY = ()


def die(msg):
    print(f'browser_test: {msg}', file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- local server

class Handler(SimpleHTTPRequestHandler):
    "Static files from the preview folder; remembers every request that failed."
    failures = []
    def log_message(self, fmt, *args): pass
    def send_error(self, code, message=None, explain=None):
        Handler.failures.append(f'{code} {self.path}')
        super().send_error(code, message, explain)


def serve(root):
    "Serve `root` on a free port of 127.0.0.1 in a background thread; return the server."
    srv = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(root)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


# ---------------------------------------------------------------- browser

def start_browser():
    "A headless Chromium for the preview, or exit(2) saying what is missing."
    try: return start_chromium(WIDTH, HEIGHT, ('--hide-scrollbars',), browser_log=True)
    except BrowserMissing as e: die(str(e))


WAIT_JS = """
const done = arguments[arguments.length - 1];
const imgs = () => [...document.images].every(i => i.complete);
const mathjax = (cb) => (window.MathJax && MathJax.Hub) ? MathJax.Hub.Queue(() => cb(true)) : cb(false);
const t0 = Date.now();
(function poll() {
  if (imgs() || Date.now() - t0 > 15000) mathjax(done); else setTimeout(poll, 100);
})();
"""

INSPECT_JS = """
const r = {title: (document.querySelector('h1') || {}).innerText || '', errors: [], external: []};
r.images = document.images.length;
r.broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0))
                               .map(i => (i.getAttribute('src') || '').slice(0, 60));
r.maths = document.querySelectorAll('.MathJax_CHTML, .MathJax, .MathJax_SVG, .MathJax_Display, mjx-container').length;
r.matherrs = document.querySelectorAll('.MathJax_Error, .mjx-merror, mjx-merror, merror').length;
const text = el => { const c = el.cloneNode(true); c.querySelectorAll('pre, code, script').forEach(e => e.remove());
                     return c.textContent; };
r.rawmath = [...document.querySelectorAll('.jp-RenderedMarkdown, .description, .vp-toc')]
              .some(e => /\\$\\$/.test(text(e)));
for (const o of document.querySelectorAll('.jp-OutputArea-output')) {
  const t = o.innerText || '', mime = o.getAttribute('data-mime-type') || '';
  const bad = /Traceback \\(most recent call last\\)/.test(t)
    || (mime === 'application/vnd.jupyter.stderr' && /\\b\\w*Error\\b/.test(t))
    || (!o.classList.contains('jp-RenderedMarkdown') && /(^|\\n)\\s*[\\w.]*(Error|Exception):/.test(t));
  if (bad) r.errors.push(t.trim().split('\\n').filter(l => /Error|Exception|Traceback/.test(l)).pop() || t.slice(0, 80));
}
if (/Traceback \\(most recent call last\\)/.test(document.body.innerText) && !r.errors.length) r.errors.push('Traceback in page');
// show_doc output: a heading, then the signature (nbdev 2.4 + fastcore 1.14: a `def ...(` block with the
// parameters' docments as comments) or a parameter table (Type / Default / Details) with other renderers
r.showdocs = [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="text/markdown"]')].filter(o =>
  o.querySelector('h2, h3, h4, h5') && ([...o.querySelectorAll('pre')].some(p => /^\s*(async\s+)?(def|class)\s+\w/.test(p.innerText))
    || [...o.querySelectorAll('table')].some(t => /Type|Details/.test((t.querySelector('thead, tr') || {}).innerText || '')))
).length;
// documented once: show_doc headings (the symbol's name) that appear twice on the page
const docHeads = [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="text/markdown"]')]
  .map(o => o.querySelector('h2, h3, h4, h5')).filter(h => h && o_isdoc(h)).map(h => h.innerText.trim().replace(/\s*¶$/, ''));
function o_isdoc(h) { const o = h.closest('.jp-OutputArea-output'); return [...o.querySelectorAll('pre')].some(
  p => /^\s*(async\s+)?(def|class)\s+\w/.test(p.innerText)) || !!o.querySelector('table'); }
r.duplicates = [...new Set(docHeads.filter((h, i) => docHeads.indexOf(h) !== i))];
// a markdown link left raw inside a rendered signature: [`name`](https://...)
r.rawlinks = [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="text/markdown"] pre')].map(p => p.innerText)
  .flatMap(t => t.match(/\[`?[\w.]+`?\]\((https?:|#)[^)]*\)/g) || []).slice(0, 5);
// ids: repeated ones, and every id (for links from other pages)
const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
r.dupids = [...new Set(ids.filter((x, i) => ids.indexOf(x) !== i))].filter(x => !/^cell-id=/.test(x)).slice(0, 5);
r.ids = ids;
r.links = [...document.querySelectorAll('main a[href*="#"], .jp-Notebook a[href*="#"]')].map(a => a.getAttribute('href'))
  .filter(h => !/^https?:/.test(h));
// shown code that runs past its column, and temporary paths in outputs
r.wide = [...document.querySelectorAll('.jp-InputArea-editor pre, .jp-InputArea pre')]
  .filter(p => p.scrollWidth > p.clientWidth + 4)
  .map(p => p.innerText.split('\\n').reduce((a, b) => b.length > a.length ? b : a, '').trim().slice(0, 60)).slice(0, 5);
r.tmp = [...document.querySelectorAll('.jp-OutputArea-output')].map(o => o.innerText)
  .flatMap(t => t.match(/\/tmp\/[\w./-]+/g) || []).slice(0, 3);
const here = location.origin;
for (const e of document.querySelectorAll('script[src], link[rel~=stylesheet][href], img[src], iframe[src]')) {
  const u = e.src || e.href || '';
  if (/^https?:/.test(u) && !u.startsWith(here)) r.external.push(u.slice(0, 80));
}
return r;
"""


def screenshot(drv, path):
    "Save a full-page screenshot (at most MAX_SHOT_HEIGHT pixels high) to `path`."
    h = drv.execute_script('return Math.max(document.body.scrollHeight, document.documentElement.scrollHeight)')
    h = max(HEIGHT, min(int(h), MAX_SHOT_HEIGHT))
    # a viewport as tall as the page, so that the fixed sidebar spans the whole screenshot
    drv.execute_cdp_cmd('Emulation.setDeviceMetricsOverride',
                        {'width': WIDTH, 'height': h, 'deviceScaleFactor': 1, 'mobile': False})
    try: shot = drv.execute_cdp_cmd('Page.captureScreenshot', {'format': 'png'})
    finally: drv.execute_cdp_cmd('Emulation.clearDeviceMetricsOverride', {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot['data']))


# ---------------------------------------------------------------- checks

def check_page(drv, base, page, shots):
    "Open one page and return (problems, facts) for it."
    Handler.failures.clear()
    drv.get_log('browser')  # drop the previous page's console messages
    drv.get(f"{base}/{page['page']}")
    typeset = drv.execute_async_script(WAIT_JS)
    r = drv.execute_script(INSPECT_JS)
    problems = [f'HTTP {f}' for f in Handler.failures if not f.endswith('/favicon.ico')]
    problems += [f'console: {m["message"][:120]}' for m in drv.get_log('browser')
                 if m.get('level') == 'SEVERE' and 'favicon.ico' not in m['message']]
    problems += [f'external resource {u}' for u in r['external']]
    problems += [f'error in output: {e[:120]!r}' for e in r['errors']]
    problems += [f'image not loaded: {b}' for b in r['broken']]
    if page.get('error'): problems.append(f'notebook failed to build: {page["error"]}')
    if not r['title'].strip(): problems.append('no title')
    if page.get('math'):
        if not typeset: problems.append('MathJax did not load')
        elif not r['maths']: problems.append('maths not typeset (no MathJax elements)')
        if r['matherrs']: problems.append(f"{r['matherrs']} MathJax error(s)")
        if r['rawmath']: problems.append('untypeset $$ maths left in the text')
    if page.get('api') and not r['showdocs']: problems.append('no show_doc API documentation on an API page')
    problems += [f'documented more than once: {d}' for d in r['duplicates']]
    problems += [f'raw markdown link in a signature: {l[:80]}' for l in r['rawlinks']]
    problems += [f'repeated id: {i}' for i in r['dupids']]
    problems += [f'code line past the column: {w!r}' for w in r['wide']]
    problems += [f'temporary path in an output: {t}' for t in r['tmp']]
    here = set(r['ids'])
    problems += [f'broken in-page link: {h}' for h in dict.fromkeys(r['links']) if h.startswith('#') and h[1:] not in here][:5]
    problems = list(dict.fromkeys(problems))  # each problem once
    advisory = [p for p in problems if p.startswith(ADVISORY)]
    problems = [p for p in problems if not p.startswith(ADVISORY)]
    r['advisory'] = advisory
    shot = shots/(Path(page['page']).with_suffix('.png').as_posix().replace('/', '__'))
    screenshot(drv, shot)
    return problems, r, shot


def load_pages(root):
    "Pages to check: from manifest.json when there, else every .html file of the preview."
    man = root/'manifest.json'
    if man.exists(): return json.loads(man.read_text())['pages']
    return [{'page': p.relative_to(root).as_posix()} for p in sorted(root.glob('**/*.html'))
            if 'mathjax' not in p.relative_to(root).parts]


def main(argv=None):
    ap = argparse.ArgumentParser(prog='python tools/browser_test.py', description=__doc__.split('\n\n')[0])
    ap.add_argument('--preview', default=str(REPO/'_preview'), help='preview folder (default: _preview)')
    ap.add_argument('--page', action='append', help='check only this page (repeatable)')
    args = ap.parse_args(argv)
    root = Path(args.preview).resolve()
    if not (root/'index.html').exists(): die(f'no preview in {root}: run `python tools/docs.py preview` first')
    pages = [p for p in load_pages(root) if not args.page or p['page'] in args.page]
    shots = root/'screenshots'
    t0, srv = time.time(), serve(root)
    base = f'http://127.0.0.1:{srv.server_address[1]}'
    try: drv = start_browser()
    except Exception as e: die(f'could not start headless Chromium: {str(e).strip().splitlines()[0]}')
    failed, ids_of, links_of = [], {}, {}
    try:
        for page in pages:
            t = time.time()
            try: problems, r, shot = check_page(drv, base, page, shots)
            except Exception as e: problems, r, shot = [f'{type(e).__name__}: {str(e).strip()[:200]}'], {}, None
            facts = f"{r.get('images', 0)} img, {r.get('maths', 0)} maths, {r.get('showdocs', 0)} show_doc"
            status = 'FAIL' if problems else 'PASS'
            print(f"{status} {page['page']:<28} {facts}; {time.time()-t:.1f}s"
                  + (f'; screenshot {shot.relative_to(REPO) if shot and shot.is_relative_to(REPO) else shot}' if shot else ''))
            for pr in problems: print(f'     - {pr}')
            for pr in r.get('advisory', []): print(f'     - (advisory) {pr}')
            if problems: failed.append((page['page'], problems))
            ids_of[page['page']], links_of[page['page']] = set(r.get('ids', [])), r.get('links', [])
    finally:
        drv.quit()
        srv.shutdown()
    for p, links in links_of.items():                  # links to an anchor of another checked page
        bad = []
        for h in dict.fromkeys(links):
            target, _, anchor = h.partition('#')
            if not target: continue
            t = posixpath.normpath(posixpath.join(posixpath.dirname(p), target))
            if t in ids_of and anchor not in ids_of[t]: bad.append(h)
        if bad:
            strict = not 'broken link'.startswith(ADVISORY)
            print(f"{'FAIL' if strict else 'WARN'} {p:<28} links to missing anchors of other pages")
            for h in bad[:5]: print(f'     - broken link: {h}')
            if strict and p not in [f for f, _ in failed]: failed.append((p, [f'broken link: {bad[0]}']))
    print(f'checked {len(pages)} page(s) in {time.time()-t0:.1f}s')
    if failed:
        print('FAILED: ' + '; '.join(f'{p} ({len(ps)} problem(s): {ps[0]})' for p, ps in failed))
    print(f'{len(pages)-len(failed)} passed, {len(failed)} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
