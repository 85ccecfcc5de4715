"""Image folders (issue #11): images/s of the cached (in-memory) and the streamed path, and the streamed path's memory.

    python benchmarks/bench_folder.py                  # folders of 5,000 and 20,000 64x64 RGB PNGs (about 5 minutes on 2 busy cores)
    python benchmarks/bench_folder.py --n 2000         # one folder of 2,000 images
    python benchmarks/bench_folder.py --out FILE.md    # where the markdown table goes too (default drafts/bench_folder.md)

For each size the script writes a folder of random-ish PNGs (8x8 random colour blocks smoothly upsampled, plus pixel
noise, in 10 class subfolders) into a temporary folder, then runs each path in a fresh Python process, so that one
path's memory does not show in the other's:

- cached: `get_dataloaders(folder, image_size=64, num_workers=2)`: the first call decodes every file once with 2
  worker processes and writes the cache; a second call reads the cache; then training epochs are served from memory.
- streamed: the same with `memory_budget=0`: the list of good files comes from the cache, and every epoch decodes the
  images again in a `DataLoader` with 2 worker processes.

Resident memory (RSS, from /proc) is read after each of 3 epochs, for the main process and for its workers together
(pages shared with the main process are counted again in each worker). What the streamed path holds does not grow
with the number of images: the list of files, a few prefetched batches. One caveat when reading RSS: glibc raises
its mmap threshold when a large block is freed, so later batch-sized buffers (3 MB of float32 per batch) come from the
heap, which keeps freed blocks for reuse; the main process's RSS can then climb for a few epochs to a plateau of a
few hundred MB, the same for any number of images (with `MALLOC_MMAP_THRESHOLD_=131072` it stays flat, but every
buffer is then mapped afresh, which made the workers several times slower here).

Batches of 64, 1 PyTorch thread per process; torchvision is imported before the clocks start. Rates are over whole training epochs (90% of the images); the
epoch rate is the median of the epochs run. Timings depend on what else runs on the machine: say so when reporting.
"""
import argparse, json, os, resource, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SIDE, BATCH, WORKERS, EPOCHS = 64, 64, 2, 3


def make_images(folder:Path, n:int, seed:int=0):
    "Write n random-ish RGB PNGs of SIDE x SIDE into 10 class subfolders of `folder`."
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in range(10): (folder/f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        low = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((SIDE, SIDE), Image.BILINEAR)
        img = np.clip(np.asarray(low, dtype=np.int16) + rng.integers(-8, 9, (SIDE, SIDE, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder/f"c{i % 10}"/f"{i:06d}.png")


def rss_mb(pid='self') -> float:
    "Resident memory of a process, MB (Linux)."
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith('VmRSS:'): return int(line.split()[1]) / 1024
    return float('nan')


def workers_rss_mb() -> float:
    "Resident memory of this process's children (the DataLoader's workers) together, MB."
    me, total = os.getpid(), 0.0
    for p in Path('/proc').iterdir():
        if not p.name.isdigit(): continue
        try:
            stat = (p/'stat').read_text()
            if int(stat.rsplit(')', 1)[1].split()[1]) == me: total += rss_mb(p.name)
        except (OSError, ValueError, IndexError): continue
    return total


def epoch(dl, e:int) -> float:
    "Serve epoch `e` of loader `dl`; return its images/s."
    dl.set_epoch(e)
    t0, n = time.perf_counter(), 0
    for x, _ in dl: n += len(x)
    return n / (time.perf_counter() - t0)


def run_path(path:str, folder:str) -> dict:
    "Measure one path in this (fresh) process."
    import torch
    torch.set_num_threads(1)
    from vae_nb.data import get_dataloaders, _tv
    _tv()                                                             # torchvision's import (1-3 s, once per process): not timed
    kw = dict(batch_size=BATCH, image_size=SIDE, num_workers=WORKERS, progress=False)
    n_files = sum(1 for _ in Path(folder).rglob('*.png'))
    res = dict(path=path, rss_start=rss_mb())
    if path == 'cached':
        t0 = time.perf_counter(); train, test = get_dataloaders(folder, **kw); res['first_s'] = time.perf_counter() - t0
        res['decode_rate'] = n_files / res['first_s']
        del train, test
        t0 = time.perf_counter(); train, test = get_dataloaders(folder, **kw); res['reload_s'] = time.perf_counter() - t0
    else: train, test = get_dataloaders(folder, memory_budget=0, **kw)
    res['loader'], res['rates'], res['rss'], res['workers_rss'] = type(train).__name__, [], [], []
    for e in range(EPOCHS):
        res['rates'].append(epoch(train, e)); res['rss'].append(rss_mb()); res['workers_rss'].append(workers_rss_mb())
    res['n_train'] = train.n
    return res


def measure(folder:Path, path:str, **env) -> dict:
    "Run `run_path` in a fresh Python process, with `env` added to the environment; return what it measured."
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'OMP_WAIT_POLICY': 'PASSIVE', **env}
    out = subprocess.run([sys.executable, __file__, '--_path', path, '--_folder', str(folder)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def table(rows:list, cmd:str, seconds:float, cpu:float, load:tuple) -> str:
    "The results as markdown: one row per folder size and path."
    mbs = lambda v: ', '.join(f"{x:.0f}" for x in v)
    lines = [f"`{cmd}`: {seconds / 60:.1f} min in all ({cpu / 60:.1f} min of CPU time; 1-minute load average {load[0]:.1f} at the start, "
             f"{load[1]:.1f} at the end, on {os.cpu_count()} cores). 64x64 RGB PNGs (about 8 KB each), batches of 64, {WORKERS} worker "
             "processes, 1 PyTorch thread per process. Other jobs shared the machine, so the rates are rough.", '',
             '| images | path | files/s, first decode | s, reload of the cache | images/s, epochs (median) | RSS MB after epochs 1, 2, 3: main | workers (together) |',
             '|---:|---|---:|---:|---:|---|---|']
    for n, name, r in rows:
        first = (f"{r['decode_rate']:,.0f}", f"{r['reload_s']:.2f}") if 'decode_rate' in r else ('', '')
        lines.append(f"| {n:,} | {name} | {first[0]} | {first[1]} | {statistics.median(r['rates']):,.0f} | {mbs(r['rss'])} | {mbs(r['workers_rss'])} |")
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, nargs='*', default=[5000, 20000], help='folder sizes (default 5000 20000)')
    p.add_argument('--out', default=str(HERE.parent/'drafts'/'bench_folder.md'), help='markdown file for the table')
    p.add_argument('--_path'); p.add_argument('--_folder')
    a = p.parse_args()
    if a._path: print(json.dumps(run_path(a._path, a._folder))); return
    t0, rows, load0 = time.perf_counter(), [], os.getloadavg()[0]
    cmd = 'python benchmarks/bench_folder.py' + (f" --n {' '.join(map(str, a.n))}" if a.n != [5000, 20000] else '')
    with tempfile.TemporaryDirectory(prefix='bench_folder_') as tmp:
        for n in a.n:
            folder = Path(tmp)/f"png{n}"
            t = time.perf_counter(); make_images(folder, n)
            print(f"{n:,} images written in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
            for name, path, env in (('cached (in memory)', 'cached', {}), ('streamed', 'streamed', {})):
                r = measure(folder, path, **env)
                assert r['loader'] == ('InMemoryLoader' if path == 'cached' else 'StreamingLoader'), r
                print(json.dumps(dict(n=n, name=name, **r)), file=sys.stderr, flush=True)
                rows.append((n, name, r))
            shutil.rmtree(folder)
    ru = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    md = table(rows, cmd, time.perf_counter() - t0, sum(r.ru_utime + r.ru_stime for r in ru), (load0, os.getloadavg()[0]))
    print(md)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(f"# Image folders: cached and streamed paths\n\n{md}\n")


if __name__ == '__main__': main()
