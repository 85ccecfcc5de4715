"""Training (or evaluating) beside another busy PyTorch process (issue #10, point 3).

`python benchmarks/bench_busy.py --boost -15` runs the default set (about 4 minutes on 2 cores); name
configurations to choose (`--list` shows them all), `--job eval` times `evaluate(k=--k)` instead of `fit`.

Each measurement is a fresh Python process with a clean environment (no OMP_*, GOMP_*, MKL_*, KMP_* variables)
that trains mnist5k's default model with `vae_nb.train.fit` (first `--n` images, batch 64, `--epochs` epochs,
in-memory loader, lr 4e-3) and reports the seconds spent in `fit`. "alone": nothing else of ours runs; "busy":
a background process that is also a default PyTorch user (1024x1024 float32 matrix products in a loop, or the
same training in a loop) starts first and is stopped afterwards. A run longer than `--timeout` is stopped and
shows as inf; the last column counts busy runs slower than 3x the first configuration's alone median, because
the stalls come and go between runs (a median hides them).

Other work on the machine spoils timings. `--boost NICE` (root only) runs everything in a new session whose
autogroup has that nice value, so other sessions only get the CPU time we leave idle, while the trainer and its
background job still compete with each other as two ordinary processes do. Without it the script waits for idle
CPUs before each run and repeats a run during which other processes took over 15% of the CPUs ("foreign" CPU s).
Reported times are medians over `--repeats` (interleaved), with the range. Nothing here is asserted by the tests.
"""
import argparse, json, os, resource, statistics, subprocess, sys, time

NCPU = len(os.sched_getaffinity(0))
HZ = os.sysconf('SC_CLK_TCK')

# ---- the configurations -------------------------------------------------------------------------------------
# trainer: how the training process is set up.
#   env: variables in its environment at start (i.e. set before `import torch`, like a library's
#        `os.environ.setdefault` in `vae_nb/__init__.py` that runs before torch is first imported)
#   env_after_import: variables set with os.environ after `import torch` (what that setdefault does when the
#        user imported torch first)
#   threads: torch.set_num_threads(...) after import: an int, 'idle' (cores idle over the last 0.2 s, from
#        /proc/stat) or 'loadavg' (cores minus the 1-minute load average)
# hog: the background process: kind 'matmul' or 'train' (the same training, in a loop), its env and threads.
CONFIGS = {
    'default':          dict(doc='torch defaults, both processes'),
    'passive':          dict(doc='trainer: OMP_WAIT_POLICY=PASSIVE before import torch', env=dict(OMP_WAIT_POLICY='PASSIVE')),
    'passive_late':     dict(doc='trainer: OMP_WAIT_POLICY=PASSIVE set after import torch', env_after_import=dict(OMP_WAIT_POLICY='PASSIVE')),
    'spin1k':           dict(doc='trainer: GOMP_SPINCOUNT=1000 before import torch', env=dict(GOMP_SPINCOUNT='1000')),
    'spin10k':          dict(doc='trainer: GOMP_SPINCOUNT=10000 before import torch', env=dict(GOMP_SPINCOUNT='10000')),
    'spin100k':         dict(doc='trainer: GOMP_SPINCOUNT=100000 before import torch', env=dict(GOMP_SPINCOUNT='100000')),
    'bind':             dict(doc='trainer: OMP_PROC_BIND=TRUE (one thread per core) before import torch', env=dict(OMP_PROC_BIND='TRUE')),
    'colocated':        dict(doc='trainer: both its threads pinned to core 0 (GOMP_CPU_AFFINITY="0 0")', env=dict(GOMP_CPU_AFFINITY='0 0')),
    'colocated_passive':dict(doc='trainer: both threads on core 0 + PASSIVE', env=dict(GOMP_CPU_AFFINITY='0 0', OMP_WAIT_POLICY='PASSIVE')),
    'threads1':         dict(doc='trainer: torch.set_num_threads(1)', threads=1),
    'threads1_passive': dict(doc='trainer: set_num_threads(1) + PASSIVE', threads=1, env=dict(OMP_WAIT_POLICY='PASSIVE')),
    'idle':             dict(doc='trainer: set_num_threads(idle cores, /proc/stat over 0.2 s)', threads='idle'),
    'loadavg':          dict(doc='trainer: set_num_threads(cores - 1-min load average)', threads='loadavg'),
    'hog_passive':      dict(doc='trainer default; background: PASSIVE', hog=dict(env=dict(OMP_WAIT_POLICY='PASSIVE'))),
    'both_passive':     dict(doc='trainer and background: PASSIVE', env=dict(OMP_WAIT_POLICY='PASSIVE'), hog=dict(env=dict(OMP_WAIT_POLICY='PASSIVE'))),
    'hog_threads1':     dict(doc='trainer default; background: set_num_threads(1)', hog=dict(threads=1)),
    'vs_train':         dict(doc='defaults; background: the same training in a loop', hog=dict(kind='train')),
    'vs_train_passive': dict(doc='trainer PASSIVE; background: training in a loop, defaults', env=dict(OMP_WAIT_POLICY='PASSIVE'), hog=dict(kind='train')),
    'vs_train_threads1':dict(doc='trainer threads 1; background: training in a loop, defaults', threads=1, hog=dict(kind='train')),
    'both_train_passive':  dict(doc='trainer and background training: both PASSIVE', env=dict(OMP_WAIT_POLICY='PASSIVE'), hog=dict(kind='train', env=dict(OMP_WAIT_POLICY='PASSIVE'))),
    'both_train_threads1': dict(doc='trainer and background training: both set_num_threads(1)', threads=1, hog=dict(kind='train', threads=1)),
}
DEFAULT_RUN = ['default', 'passive', 'passive_late', 'threads1', 'vs_train', 'vs_train_threads1']

def clean_env(extra=None):
    "os.environ without threading variables, plus `extra`."
    env = {k: v for k, v in os.environ.items() if not k.startswith(('OMP_', 'GOMP_', 'KMP_', 'MKL_', 'OPENBLAS_'))}
    env.update(extra or {}); env['PYTHONUNBUFFERED'] = '1'
    return env

# ---- CPU accounting ---------------------------------------------------------------------------------------------
def cpu_jiffies():
    "(busy, total) jiffies over all CPUs since boot, from /proc/stat."
    f = [int(v) for v in open('/proc/stat').readline().split()[1:9]]
    idle = f[3] + f[4]
    return sum(f) - idle, sum(f)

def idle_cores(dt=0.2):
    "Number of cores that were idle over the last `dt` seconds."
    b0, t0 = cpu_jiffies(); time.sleep(dt); b1, t1 = cpu_jiffies()
    return NCPU * (1 - (b1 - b0) / max(t1 - t0, 1))

def proc_cpu(pid):
    "CPU seconds used so far by process `pid` (all its threads)."
    try: f = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
    except OSError: return 0.0
    return (int(f[11]) + int(f[12])) / HZ

def wait_quiet(min_idle=0.85, max_wait=60):
    "Wait until at least `min_idle` of the CPUs stay idle for 0.5 s (or `max_wait` s pass)."
    t = time.time()
    while time.time() - t < max_wait:
        if idle_cores(0.5) >= min_idle * NCPU: return
        time.sleep(1)

# ---- child processes --------------------------------------------------------------------------------------------
def setup_threads(threads):
    import torch
    if threads == 'idle': threads = max(1, round(idle_cores(0.2)))
    elif threads == 'loadavg': threads = max(1, NCPU - round(os.getloadavg()[0]))
    if threads: torch.set_num_threads(int(threads))
    return torch.get_num_threads()

def data(n):
    from vae_nb.data import load_mnist5k, to_model_range
    x, y, _, _ = load_mnist5k()
    return to_model_range(x[:n]), y[:n]

def new_model():
    import torch
    from vae_nb.model import VAE
    torch.manual_seed(0)
    return VAE(in_channels=1, input_size=32, z_dim=16, encoder_features=16, decoder_features=8)

def child_train(cfg, n, epochs, job='fit', k=100):
    import torch
    for k_, v in cfg.get('env_after_import', {}).items(): os.environ[k_] = v
    threads = setup_threads(cfg.get('threads'))
    from vae_nb.data import InMemoryLoader
    from vae_nb.train import fit, evaluate
    model = new_model()
    if job == 'eval':                                   # importance-sampled log-likelihood of the first n test images
        from vae_nb.data import load_mnist5k, to_model_range
        _, _, x, y = load_mnist5k()
        dl = InMemoryLoader(to_model_range(x[:n]), y[:n], batch_size=64)
        evaluate(model, InMemoryLoader(to_model_range(x[:8]), y[:8]), k=k)   # warm-up
        c, t = time.process_time(), time.perf_counter()
        evaluate(model, dl, k=k)
        print(json.dumps(dict(seconds=time.perf_counter() - t, cpu=time.process_time() - c, threads=threads)))
        return
    x, y = data(n)
    dl = InMemoryLoader(x, y, batch_size=64, shuffle=True)
    c, t = time.process_time(), time.perf_counter()
    hist = fit(model, dl, epochs=epochs, lr=4e-3, device='cpu', progress=False)
    print(json.dumps(dict(seconds=time.perf_counter() - t, cpu=time.process_time() - c, threads=threads,
                          epochs=[round(h['seconds'], 2) for h in hist])))

def child_hog(hog, n):
    import torch
    setup_threads(hog.get('threads'))
    if hog.get('kind', 'matmul') == 'matmul':
        a = torch.randn(1024, 1024); a @ a
        print('ready', flush=True)
        while True: a @ a
    from vae_nb.data import InMemoryLoader
    from vae_nb.train import fit
    x, y = data(n)
    dl, model = InMemoryLoader(x, y, batch_size=64, shuffle=True), new_model()
    fit(model, dl, epochs=1, lr=4e-3, device='cpu', progress=False)
    print('ready', flush=True)
    while True: fit(model, dl, epochs=1, lr=4e-3, device='cpu', progress=False)

# ---- the parent -------------------------------------------------------------------------------------------------
def run_once(name, busy, args):
    "One timed training run: dict(seconds, cpu, threads, foreign), `foreign` = CPU s used by other processes."
    cfg = CONFIGS[name]
    wait_quiet(max_wait=5 if args.boost else 60)
    hog = None
    if busy:
        h = cfg.get('hog', {})
        hog = subprocess.Popen([sys.executable, __file__, '--_hog', name, '--n', str(args.n)], env=clean_env(h.get('env')),
                               stdout=subprocess.PIPE, text=True)
        hog.stdout.readline(); time.sleep(0.5)              # started, warmed up, running
    b0, _ = cpu_jiffies(); h0 = proc_cpu(hog.pid) if hog else 0.0; c0 = children_cpu()
    p = subprocess.Popen([sys.executable, __file__, '--_train', name, '--n', str(args.n), '--epochs', str(args.epochs),
                          '--job', args.job, '--k', str(args.k)],
                         env=clean_env(cfg.get('env')), stdout=subprocess.PIPE, text=True)
    try: out, _ = p.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired: p.kill(); p.wait(); out = None
    trainer_cpu = children_cpu() - c0                    # the trainer is reaped, the background job not yet
    h1 = proc_cpu(hog.pid) if hog else 0.0
    b1, _ = cpu_jiffies()
    if hog: hog.kill(); hog.wait()
    res = json.loads(out.strip().splitlines()[-1]) if out else dict(seconds=float('inf'), cpu=float('nan'), threads=0)
    res['foreign'] = max(0.0, (b1 - b0) / HZ - trainer_cpu - (h1 - h0))
    return res

def children_cpu():
    "CPU seconds of this process's reaped children so far."
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

def measure(name, busy, args):
    """run_once; without --boost, repeated (up to 3 times) while other processes took more than 15% of the CPUs.
    With --boost other work only gets the CPU time we leave idle, so `foreign` is then kept as information."""
    for attempt in range(1 if args.boost else 3):
        r = run_once(name, busy, args)
        if args.boost or r['foreign'] <= 0.15 * r['seconds'] * NCPU: return r
        print(f"  [{name} {'busy' if busy else 'alone'}: other processes used {r['foreign']:.1f} CPU s, repeating]", file=sys.stderr)
    r['disturbed'] = True
    return r

def fmt(ts):
    m = statistics.median(ts)
    return f"{m:.2f} ({min(ts):.2f}–{max(ts):.2f})" if len(ts) > 1 else f"{m:.2f}"

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('configs', nargs='*', help=f"configurations to run (default: {' '.join(DEFAULT_RUN)})")
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--epochs', type=int, default=2)
    ap.add_argument('--n', type=int, default=2048, help='training images (test images with --job eval)')
    ap.add_argument('--job', choices=('fit', 'eval'), default='fit', help="what is timed: training, or `evaluate(..., k=--k)` of the first --n test images")
    ap.add_argument('--k', type=int, default=100, help='importance samples per image for --job eval')
    ap.add_argument('--timeout', type=float, default=20, help='seconds before a training run is stopped (reported as >timeout)')
    ap.add_argument('--json', help='write the raw numbers here')
    ap.add_argument('--boost', type=int, default=0, metavar='NICE',
                    help='run in a new session whose autogroup has this nice value (e.g. -10, needs root): shields the '
                         'trainer and its background job, which keep competing with each other as usual, from other work')
    ap.add_argument('--list', action='store_true')
    ap.add_argument('--_train'); ap.add_argument('--_hog')
    args = ap.parse_args()
    if args._train: return child_train(CONFIGS[args._train], args.n, args.epochs, args.job, args.k)
    if args._hog: return child_hog(CONFIGS[args._hog].get('hog', {}), args.n)
    if args.list:
        for k, v in CONFIGS.items(): print(f"{k:18} {v['doc']}")
        return
    names = args.configs or DEFAULT_RUN
    if args.boost:
        os.setsid()
        with open('/proc/self/autogroup', 'w') as f: f.write(str(args.boost))
    for n in names:
        if n not in CONFIGS: sys.exit(f"unknown configuration {n!r}; --list shows them")
    raw = {n: dict(alone=[], busy=[]) for n in names}
    for rep in range(args.repeats):                      # interleaved, so slow drifts hit every configuration
        for n in names:
            for busy in (False, True):
                r = measure(n, busy, args)
                raw[n]['busy' if busy else 'alone'].append(r)
                print(f"  rep {rep} {n:18} {'busy ' if busy else 'alone'} {r['seconds']:6.2f} s  threads {r['threads']}  "
                      f"cpu {r['cpu']:.1f} s  epochs {r.get('epochs')}  foreign {r['foreign']:.1f} s{'  DISTURBED' if r.get('disturbed') else ''}", file=sys.stderr)
    base = statistics.median(r['seconds'] for r in raw[names[0]]['alone'])
    job = f"fit of {args.n} images x {args.epochs} epochs" if args.job == 'fit' else f"evaluate(k={args.k}) of {args.n} test images"
    print(f"\n{NCPU} cores{f', autogroup nice {args.boost}' if args.boost else ''}; {job}; median (min–max) of {args.repeats}; "
          f"busy = beside a background PyTorch process; inf = stopped after --timeout {args.timeout:g} s; 'vs {names[0]} alone' divides by {names[0]}'s alone median.\n")
    print("| configuration | threads alone/busy | alone s | busy s | busy/alone | busy vs " + names[0] + " alone | busy runs > 3× |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        a = [r['seconds'] for r in raw[n]['alone']]; b = [r['seconds'] for r in raw[n]['busy']]
        th = f"{raw[n]['alone'][0]['threads']}/{','.join(sorted({str(r['threads']) for r in raw[n]['busy']}))}"
        ma, mb = statistics.median(a), statistics.median(b)
        flag = ' (some runs disturbed)' if any(r.get('disturbed') for r in raw[n]['alone'] + raw[n]['busy']) else ''
        print(f"| {n}: {CONFIGS[n]['doc']}{flag} | {th} | {fmt(a)} | {fmt(b)} | {mb / ma:.1f}× | {mb / base:.1f}× | {sum(t > 3 * base for t in b)}/{len(b)} |")
    if args.json:
        with open(args.json, 'w') as f: json.dump(dict(args=vars(args), raw=raw), f, indent=1)

if __name__ == '__main__': main()
