#!/usr/bin/env python
"""Check `vae_nb.explorer`'s widgets in a real JupyterLab, driven by headless Chromium.

    python tools/explorer_check.py [--screenshot PATH] [--checkpoint CKPT] [--epochs N] [--timeout S]

Writes a small notebook to a temporary folder (it trains a small MLP VAE on the embedded MNIST digits for `--epochs`,
or loads `--checkpoint`, then displays `latent_explorer` and `interpolation_explorer`), starts JupyterLab there on
127.0.0.1 with no token and its own settings (no news, no update checks), and opens the notebook in headless
Chromium (Debian's `chromium` + `chromium-driver`, driven by `selenium`), which can reach no host but 127.0.0.1.
It runs the cells, then checks, on the rendered `<img>` (its `src` and a hash of its decoded pixels):

1. the latent explorer shows an image;
2. moving the first slider with the keyboard (ArrowRight ×10, +1.0) changes it, and the readout says +1.0;
3. dragging the second slider with the mouse changes it again;
4. the reset button puts both sliders back to 0 and brings back the first image, pixel for pixel;
5. choosing an image in the "start from" drop-down changes it;
6. moving the interpolation explorer's t slider changes its middle image.

Every wait is bounded (`--timeout`, default 180 s for the cells, 30 s for each picture). It saves a screenshot of
the notebook after step 3 to `--screenshot` and one at the end next to it (`*_end.png`), prints one line per check,
then `N passed, M failed`; exit status 1 when a check failed, 2 when JupyterLab or the browser could not be started.
JupyterLab and the kernels it started are shut down at the end, by process id. Installs nothing.
"""
import argparse, json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent))
from chromium import start_chromium, BrowserMissing

WIDTH, HEIGHT = 1280, 1000


def die(msg):
    print(f'explorer_check: {msg}', file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- the notebook

def notebook(checkpoint, epochs):
    "A notebook that builds both explorers, as a JSON-ready dict."
    if checkpoint: build = f"from vae_nb.checkpoint import load_model\nmodel = load_model({str(checkpoint)!r})"
    else: build = f"from vae_nb.test_utils import trained_mlp_vae\nmodel, history = trained_mlp_vae(epochs={epochs})  # a small MLP VAE: quick to train on a CPU"
    cells = [
        "import torch\nfrom vae_nb.model import VAE\nfrom vae_nb.data import load_mnist5k, to_model_range, dataset_info\n"
        "from vae_nb.explorer import latent_explorer, interpolation_explorer\n" + build + "\n"
        "_, _, x, y = load_mnist5k(); x, y = to_model_range(x[:500]), y[:500]\nclasses = dataset_info('mnist5k')['classes']",
        "ex = latent_explorer(model.cpu(), x, y, classes, n_sliders=4)\nex",
        "ie = interpolation_explorer(model, x, y, classes, first=0, last=1)\nie",
    ]
    return dict(nbformat=4, nbformat_minor=5,
                metadata=dict(kernelspec=dict(name='python3', display_name='Python 3', language='python')),
                cells=[dict(cell_type='code', id=f'c{i}', metadata={}, execution_count=None, outputs=[], source=s)
                       for i, s in enumerate(cells)])


# ---------------------------------------------------------------- JupyterLab

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def start_lab(root, port, log):
    "JupyterLab on 127.0.0.1:port serving `root`, token disabled, with settings that fetch nothing."
    settings = root/'.lab-settings'
    for ext, name, value in (('apputils-extension', 'notification', dict(fetchNews='false', checkForUpdates=False)),
                             ('notebook-extension', 'tracker', dict(windowingMode='none'))):
        f = settings/'@jupyterlab'/ext/f'{name}.jupyterlab-settings'
        f.parent.mkdir(parents=True, exist_ok=True); f.write_text(json.dumps(value))
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(root/'.lab-workspaces'),
               JUPYTER_RUNTIME_DIR=str(root/'.runtime'), PYTHONUNBUFFERED='1')
    cmd = [sys.executable, '-m', 'jupyter', 'lab', '--no-browser', '--ip=127.0.0.1', f'--port={port}',
           '--ServerApp.port_retries=0', "--IdentityProvider.token=", "--ServerApp.password=",
           f'--ServerApp.root_dir={root}', '--LabApp.news_url=None', '--LabApp.extension_manager=readonly',
           '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate'] + (['--allow-root'] if os.geteuid() == 0 else [])
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_lab(proc, port, timeout):
    "Wait until the server answers /api/status; False if it died or timed out."
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None: return False
        try:
            with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/status', timeout=2) as r:
                if r.status == 200: return True
        except OSError: time.sleep(0.5)
    return False


def descendants(pid):
    "Ids of all live descendants of process `pid` (read from /proc)."
    kids = {}
    for p in Path('/proc').iterdir():
        if not p.name.isdigit(): continue
        try: ppid = int((p/'stat').read_text().rsplit(')', 1)[1].split()[1])
        except (OSError, IndexError, ValueError): continue
        kids.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for k in kids.get(todo.pop(), []): out.append(k); todo.append(k)
    return out


def stop_lab(proc):
    "Stop JupyterLab (SIGTERM, then SIGKILL after 15 s) and any kernel it left behind, by process id."
    kids = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(5)
    for pid in kids:
        try: os.kill(pid, signal.SIGKILL)
        except ProcessLookupError: pass
    return len(kids)


# ---------------------------------------------------------------- browser

def start_browser():
    "A headless Chromium for JupyterLab, or exit(2) saying what is missing."
    try: return start_chromium(WIDTH, HEIGHT, script_timeout=30)
    except BrowserMissing as e: die(str(e))


# the <img>'s src and a hash of its decoded pixels (blob: URLs are same-origin, so the canvas is readable)
PIXELS_JS = """
const img = arguments[0];
if (!img.complete || !img.naturalWidth) return null;
const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
const d = ctx.getImageData(0, 0, c.width, c.height).data;
let h = 2166136261;
for (let i = 0; i < d.length; i++) { h ^= d[i]; h = Math.imul(h, 16777619) >>> 0; }
return [img.getAttribute('src'), c.width, c.height, h];
"""


def until(fn, timeout, what, poll=0.2):
    "Poll `fn()` until it returns something truthy; raise TimeoutError naming `what`."
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            v = fn()
            if v: return v
        except RuntimeError: raise
        except Exception: pass
        time.sleep(poll)
    raise TimeoutError(f'{what} (after {timeout:.0f} s)')


class Lab:
    "The notebook open in JupyterLab, with helpers to find the widgets in a cell's output."
    def __init__(self, drv, pic_timeout):
        from selenium.webdriver.common.by import By
        self.drv, self.By, self.t = drv, By, pic_timeout

    def cell(self, i):
        return self.drv.find_elements(self.By.CSS_SELECTOR, '.jp-Notebook .jp-CodeCell')[i]

    def imgs(self, i):
        return self.cell(i).find_elements(self.By.CSS_SELECTOR, '.jp-OutputArea-output img.widget-image')

    def menu(self, *path):
        "Click through the main menu, e.g. `menu('Run', 'Run All Cells')`."
        items = lambda sel: self.drv.find_elements(self.By.CSS_SELECTOR, sel)
        top = until(lambda: next((e for e in items('#jp-MainMenu .lm-MenuBar-item') if e.text.strip() == path[0]), None), 30, f'no menu {path[0]!r}')
        top.click()
        for name in path[1:]:
            until(lambda: next((e for e in items('.lm-Menu .lm-Menu-item') if e.is_displayed()
                                and e.text.strip().startswith(name)), None), 10, f'no menu item {name!r}').click()

    def error(self):
        "Raise `RuntimeError` with the last line of the first error output in the notebook, if there is one."
        err = self.drv.find_elements(self.By.CSS_SELECTOR, '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
        if err: raise RuntimeError('error in a cell: ' + err[0].text.strip().splitlines()[-1])

    def pixels(self, img):
        return self.drv.execute_script(PIXELS_JS, img)

    def changed(self, img, before, what):
        "Wait until `img` shows a picture different from `before`; return it."
        return until(lambda: (p := self.pixels(img)) and p[3] != before[3] and p, self.t, what)


# ---------------------------------------------------------------- checks

def run_checks(lab, args, shot, results):
    "Open the notebook, run it, and append (name, ok, detail) for each check to `results`."
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
    drv, By = lab.drv, lab.By
    def check(name, fn):
        t = time.time()
        try: detail = fn(); results.append((name, True, f'{detail} ({time.time() - t:.1f} s)'))
        except Exception as e: results.append((name, False, f'{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}'))
        return results[-1][1]

    drv.get(f'http://127.0.0.1:{args.port}/lab/tree/explorer.ipynb')
    until(lambda: len(drv.find_elements(By.CSS_SELECTOR, '.jp-Notebook .jp-CodeCell')) == 3, 60, 'the notebook did not open')
    until(lambda: drv.find_elements(By.CSS_SELECTOR, '.jp-Notebook-ExecutionIndicator[data-status="idle"]')
          or 'Idle' in drv.find_element(By.CSS_SELECTOR, '.jp-StatusBar-Widget, #jp-main-statusbar').text, 60, 'the kernel did not start')
    # run the cells from the menu: Run > Run All Cells. On a loaded machine the first request can be lost while the
    # kernel is still settling (seen in CI: every prompt still empty minutes later), so ask again until one starts.
    prompts = lambda: [p.text for p in drv.find_elements(By.CSS_SELECTOR, '.jp-CodeCell .jp-InputPrompt')]
    for _ in range(4):
        lab.menu('Run', 'Run All Cells')
        try: until(lambda: any(t.strip() not in ('', '[ ]:') for t in prompts()), 20, 'no cell started'); break
        except TimeoutError: pass
    state = {}

    def shown():
        img = until(lambda: lab.error() or ((ims := lab.imgs(1)) and lab.pixels(ims[0]) and ims[0]), args.timeout,
                    'no image in the latent explorer')
        state['img'], state['first'] = img, lab.pixels(img)
        w, h = drv.execute_script('return [arguments[0].clientWidth, arguments[0].clientHeight]', img)
        if (w, h) != tuple(state['first'][1:3]): raise AssertionError(f"a {state['first'][1]}x{state['first'][2]} PNG drawn at {w}x{h}: rescaled")
        return f"{w}x{h} px PNG drawn at its size, src {state['first'][0][:40]}..."
    if not check('latent explorer shows an image', shown): return

    sliders = lab.cell(1).find_elements(By.CSS_SELECTOR, '.widget-slider')
    readout = lambda k: sliders[k].find_element(By.CSS_SELECTOR, '.widget-readout').text.strip()

    def keyboard():
        handle = sliders[0].find_element(By.CSS_SELECTOR, '.noUi-handle')
        drv.execute_script('arguments[0].focus()', handle)
        for _ in range(10): handle.send_keys(Keys.ARROW_RIGHT)
        state['kb'] = lab.changed(state['img'], state['first'], 'the image did not change after the keyboard move')
        until(lambda: readout(0) == '+1.0', lab.t, f'slider readout is {readout(0)!r}, not +1.0')
        return f"readout {readout(0)}, pixel hash {state['first'][3]:08x} -> {state['kb'][3]:08x}"
    check('keyboard: first slider +1.0 redraws the image', keyboard)

    def drag():
        handle = sliders[1].find_element(By.CSS_SELECTOR, '.noUi-handle')
        before = lab.pixels(state['img'])
        # a drag that lands while the page is still busy can be lost (it happened once in CI, on a loaded machine):
        # up to three drags, each given a third of the time; the image must change after one of them
        for attempt in range(3):
            drv.execute_script('arguments[0].scrollIntoView({block: "center"})', handle)
            ActionChains(drv).click_and_hold(handle).move_by_offset(-40, 0).move_by_offset(-40, 0).release().perform()
            try:
                until(lambda: (p := lab.pixels(state['img'])) and p[3] != before[3], lab.t / 3,
                      'the image did not change after dragging the second slider'); break
            except TimeoutError:
                if attempt == 2: raise
        drv.execute_script('arguments[0].scrollIntoView({block: "start"})', lab.cell(1))
        drv.save_screenshot(str(shot))
        return f"readout {readout(1)}, screenshot {shot}"
    check('mouse: dragging the second slider redraws the image', drag)

    def reset():
        button = next(b for b in lab.cell(1).find_elements(By.CSS_SELECTOR, 'button') if b.text.strip() == 'reset')
        button.click()
        until(lambda: lab.pixels(state['img'])[3] == state['first'][3], lab.t, 'reset did not bring back the first image')
        until(lambda: [readout(0), readout(1)] == ['+0.0', '+0.0'], lab.t, f'readouts {readout(0)}, {readout(1)} after reset')
        return 'sliders at +0.0, same pixels as at first'
    check('reset button restores the first image', reset)

    def dropdown():
        select = Select(lab.cell(1).find_element(By.CSS_SELECTOR, 'select'))
        option = select.options[4].text
        select.select_by_index(4)
        lab.changed(state['img'], state['first'], f'choosing {option!r} did not change the image')
        return f'chose {option!r}'
    check('"start from" drop-down changes the base point', dropdown)

    def interpolation():
        img = until(lambda: (ims := lab.imgs(2)) and len(ims) == 3 and all(lab.pixels(i) for i in ims) and ims[1],
                    args.timeout, 'no images in the interpolation explorer')
        before = lab.pixels(img)
        handle = lab.cell(2).find_element(By.CSS_SELECTOR, '.widget-slider .noUi-handle')
        drv.execute_script('arguments[0].focus()', handle)
        for _ in range(6): handle.send_keys(Keys.ARROW_LEFT)
        lab.changed(img, before, 'the interpolant did not change when t moved')
        t = lab.cell(2).find_element(By.CSS_SELECTOR, '.widget-slider .widget-readout').text
        drv.execute_script('arguments[0].scrollIntoView({block: "start"})', lab.cell(1))
        end = shot.with_name(shot.stem + '_end' + shot.suffix); drv.save_screenshot(str(end))
        return f't = {t}, screenshot {end}'
    check('interpolation explorer: moving t redraws the interpolant', interpolation)


def main(argv=None):
    ap = argparse.ArgumentParser(prog='python tools/explorer_check.py', description=__doc__.split('\n\n')[0])
    ap.add_argument('--screenshot', default=str(Path(tempfile.gettempdir())/'vae_nb_explorer_check.png'),
                    help='where to save the screenshot (default: %(default)s)')
    ap.add_argument('--checkpoint', help='explore this checkpoint (from vae_nb.train.save_checkpoint) instead of training')
    ap.add_argument('--epochs', type=int, default=2, help='epochs of training a small MLP VAE on mnist5k when no checkpoint is given (default 2)')
    ap.add_argument('--timeout', type=float, default=180, help='seconds to wait for the cells to run (default 180)')
    ap.add_argument('--keep', action='store_true', help='keep the temporary folder (JupyterLab log, notebook)')
    args = ap.parse_args(argv)
    shot = Path(args.screenshot).resolve(); shot.parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix='vae_nb_explorer_'))
    (root/'explorer.ipynb').write_text(json.dumps(notebook(args.checkpoint and Path(args.checkpoint).resolve(), args.epochs)))
    args.port = free_port()
    t0, results, log = time.time(), [], open(root/'jupyterlab.log', 'w')
    lab_proc = start_lab(root, args.port, log)
    drv = None
    try:
        if not wait_for_lab(lab_proc, args.port, 60): die(f'JupyterLab did not start; see {root/"jupyterlab.log"}')
        try: drv = start_browser()
        except SystemExit: raise
        except Exception as e: die(f'could not start headless Chromium: {str(e).strip().splitlines()[0]}')
        lab = Lab(drv, 30)
        try: run_checks(lab, args, shot, results)
        except Exception as e: results.append(('open and run the notebook', False, f'{type(e).__name__}: {str(e).strip()[:200]}'))
        if not all(ok for _, ok, _ in results):
            fail = shot.with_name(shot.stem + '_failure' + shot.suffix)
            try: drv.save_screenshot(str(fail)); print(f'screenshot of the failure: {fail}')
            except Exception: pass
    finally:
        if drv is not None: drv.quit()
        n = stop_lab(lab_proc); log.close()
        print(f'JupyterLab (pid {lab_proc.pid}) stopped, {n} child process(es) ended')
        if not args.keep: shutil.rmtree(root, ignore_errors=True)
        else: print(f'kept {root}')
    for name, ok, detail in results: print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
    failed = sum(not ok for _, ok, _ in results)
    print(f'{len(results) - failed} passed, {failed} failed in {time.time() - t0:.0f} s')
    return int(failed > 0)


if __name__ == '__main__': raise SystemExit(main())
