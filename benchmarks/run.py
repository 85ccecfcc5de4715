"""vae_nb benchmarks: importance-sampled log-likelihood, decoder batch size, memory, training throughput, evaluation at scale.

Run `python benchmarks/run.py` (all parts) or name some: `python benchmarks/run.py ll chunks rule memory train eval threads`.
`--device cuda` on a GPU; `--smoke` runs every part at tiny sizes (under a minute on 2 CPU cores, for CI) and exits
non-zero if any part fails. Prints markdown tables. Times are medians of several repeats after a warm-up; ratios
measured side by side in one run carry over between machines, absolute times do not. Not part of the tests:
nothing here asserts a speed.
"""
import argparse, inspect, json, math, os, platform, statistics, subprocess, sys, time, traceback
import vae_nb   # before torch: it sets OMP_WAIT_POLICY=PASSIVE (unless set), as every vae_nb command and notebook has it
import torch
from vae_nb.model import VAE

try: from vae_nb.data import MNIST5K_CONFIG; CONFIG = MNIST5K_CONFIG['model']   # what `vae_nb_train` builds for mnist5k
except ImportError: CONFIG = dict(in_channels=1, input_size=32, z_dim=16, encoder_features=16, decoder_features=8)

# ---- the model's hot-path API ----
# vae_nb has `model.encode(x, check=False)`, `model.decode(z, check=False)` and `model(x, check=False)`; older trees
# only had private `_encode`/`_forward`. Every call below goes through these three helpers: dropping the fallback is
# deleting `_PUBLIC`'s line and the `if ... else ...` tails.
_PUBLIC = 'check' in inspect.signature(VAE.decode).parameters
def encode(model, x): return model.encode(x, check=False) if _PUBLIC else model._encode(x)       # q(z|x)
def decode(model, z): return model.decode(z, check=False) if _PUBLIC else model.decoder(z)       # (N, C, S, S)
def forward(model, x): return model(x, check=False) if _PUBLIC else model._forward(x)            # (recon, nll, kl)
def device_of(model): return next(model.parameters()).device

# ---- sizes: the full run and the smoke run ----
FULL = dict(smoke=False, K=1000, repeat=3, ll_batches=(1, 8, 64),
            chunk_batches=(8,), chunk_latents=tuple(2**i for i in range(6, 17)),         # 64 .. 65536
            rule_batches=(1, 8, 64), rule_latents=(128, 256, 512, 1024, 2048, 4096),
            floor_latents=(128, 256, 512, 1024, 2048, 4096),
            memory_batch=8, memory_Ks=(100, 10_000),
            train_images=None, train_batches=(64, 512), compile_backend='inductor',
            eval_k=1000, eval_n=None, eval_batch=100)
SMOKE = dict(smoke=True, K=16, repeat=1, ll_batches=(1, 4),
             chunk_batches=(4,), chunk_latents=(8, 32, 64),
             rule_batches=(1, 4), rule_latents=(8, 32), floor_latents=(8, 32),
             memory_batch=2, memory_Ks=(4, 16),
             train_images=64, train_batches=(8, 16), compile_backend='aot_eager',
             eval_k=8, eval_n=16, eval_batch=8)
FORMATS = dict(contiguous=torch.contiguous_format, channels_last=torch.channels_last)   # memory formats: chunks and rule
PARTS = ('ll', 'chunks', 'rule', 'memory', 'train', 'eval', 'threads')

def timeit(f, repeat=5, warmup=1, sync=None):
    "Median wall time of `f()` in seconds."
    for _ in range(warmup): f()
    ts = []
    for _ in range(repeat):
        if sync: sync()
        t = time.perf_counter(); f()
        if sync: sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)

def syncer(device):
    "What waits for the device's queued work: `torch.cuda.synchronize` on CUDA, nothing on the CPU."
    return torch.cuda.synchronize if device.type == 'cuda' else None

def machine(device):
    "One line describing where the numbers come from."
    env = ', '.join(f"{k}={os.environ[k]}" for k in ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY') if k in os.environ)
    s = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
         f"torch {torch.__version__}, {torch.get_num_threads()} threads" + (f" ({env})" if env else ''))
    if device.type == 'cuda': s += f", {torch.cuda.get_device_name(device)}"
    return s

def mnist_model(device, dtype=torch.float32, memory_format=torch.contiguous_format):
    "The model `vae_nb_train` builds for mnist5k, in eval mode."
    torch.manual_seed(0)
    return VAE(**CONFIG).to(device, dtype, memory_format=memory_format).eval()

def images(B, device):
    "A batch of B random images in [-1, 1], shape (B, 1, 32, 32)."
    return torch.rand(B, CONFIG['in_channels'], CONFIG['input_size'], CONFIG['input_size'], device=device) * 2 - 1

def is_oom(e):
    "True when `e` is an out-of-memory error (CUDA's, or the CPU allocator's)."
    return isinstance(e, getattr(torch.cuda, 'OutOfMemoryError', ())) or 'out of memory' in str(e).lower()

# ---- importance-sampled log-likelihood ----
def floor_sizes(device, S):
    "Decoder batch sizes (latents per call) over which the decode floor is the best: larger ones too on a GPU."
    return S['floor_latents'] + ((8192, 16384, 32768, 65536) if device.type == 'cuda' and not S['smoke'] else ())

def timed(f, sync=None):
    "Wall-clock and process-CPU seconds of one call of `f()`. CPU time is what a busy machine disturbs least (not on a GPU)."
    if sync: sync()
    w, c = time.perf_counter(), time.process_time(); f()
    if sync: sync()
    return time.perf_counter() - w, time.process_time() - c

def side_by_side(model, n, sizes, fns, repeat=3, sync=None):
    """Per repeat, the seconds of a bare decode (no_grad) of `n` latents in calls of each of `sizes` latents, then of each
    of `fns` (a dict name -> function), back to back so that a busy machine slows them alike; `floor` is that repeat's
    fastest bare decode: what any K-sample estimator must pay. One dict per repeat: wall-clock seconds under each name,
    process-CPU seconds under ('cpu', name), and `floor`, `floor_at`, `cpu_floor`."""
    sizes = sorted({min(L, n) for L in sizes})
    z = torch.randn(max(sizes), model.z_dim, device=device_of(model))
    def bare(L):
        with torch.no_grad():
            for s in range(0, n, L): decode(model, z[:min(L, n - s)])
    jobs = {('decode', L): (lambda L=L: bare(L)) for L in sizes} | fns
    for f in jobs.values(): f()                                                  # warm-up
    reps = []
    for _ in range(repeat):
        r = {}
        for k, f in jobs.items(): r[k], r['cpu', k] = timed(f, sync)
        r['floor'], r['floor_at'] = min((r['decode', L], L) for L in sizes)
        r['cpu_floor'] = min(r['cpu', ('decode', L)] for L in sizes)
        reps.append(r)
    return reps

def progress(*msg):
    "A progress line on stderr (the tables go to stdout)."
    print(' ', *msg, file=sys.stderr, flush=True)

def median(reps, f):
    "Median over repeats of `f(repeat)`."
    return statistics.median(f(r) for r in reps)

def chunk_for(latents, B, K):
    "`log_likelihood`'s `chunk_size` (samples per example) for about `latents` latents per decoder call."
    return max(1, min(K, latents // B))

def seed_loop(model, x, K):
    "The seed's way: a Python loop over the K samples, one decode of the batch per sample."
    from vae_nb.distributions import DiagonalGaussianDistribution as DG
    def f():
        with torch.no_grad():
            q = encode(model, x)
            logw = []
            for _ in range(K):
                z = q.sample()
                lw = -DG(decode(model, z)).nll(x) - DG(torch.zeros_like(z)).nll(z) + DG(q.mean, q.logvar).nll(z)
                logw.append(lw)
            return torch.logsumexp(torch.stack(logw), 0) - math.log(K)
    return f

def bench_ll(device, S):
    "log_likelihood at its default chunking vs the decode floor (side by side, median ratio) and the seed's loop."
    model, sync, K, rows = mnist_model(device), syncer(device), S['K'], []
    for B in S['ll_batches']:
        x = images(B, device)
        reps = side_by_side(model, K * B, floor_sizes(device, S), dict(ll=lambda: model.log_likelihood(x, k=K)), S['repeat'], sync)
        t_ll = median(reps, lambda r: r['ll'])
        t_seed = timeit(seed_loop(model, x, K), max(1, S['repeat'] - 2), sync=sync)
        rows.append(dict(B=B, K=K, floor_s=median(reps, lambda r: r['floor']), ll_s=t_ll, seed_s=t_seed,
                         ll_over_floor=median(reps, lambda r: r['ll'] / r['floor']), speedup_over_seed=t_seed / t_ll,
                         cpu_ll_over_floor=median(reps, lambda r: r['cpu', 'll'] / r['cpu_floor']) if device.type == 'cpu' else None))
        progress(f"ll: batch {B}: {rows[-1]['ll_over_floor']:.2f}× the floor")
    return rows

def bench_chunks(device, S):
    "log_likelihood's time against latents per decoder call, contiguous vs channels_last, until memory runs out."
    sync, K, rows = syncer(device), S['K'], []
    batches = S['chunk_batches'] + ((64,) if device.type == 'cuda' and not S['smoke'] else ())  # K·B ≥ 65536 on a GPU
    for fmt_name in S['formats']:
        fmt = FORMATS[fmt_name]
        model = mnist_model(device, memory_format=fmt)
        for B in batches:
            x = images(B, device).contiguous(memory_format=fmt)
            for L in sorted({min(L, K * B) for L in S['chunk_latents']}):
                c = chunk_for(L, B, K)
                row = dict(format=fmt_name, B=B, K=K, chunk_size=c, latents_per_call=c * B)
                try: row['ll_s'] = timeit(lambda: model.log_likelihood(x, K=K, chunk_size=c), S['repeat'], sync=sync)
                except RuntimeError as e:
                    if not is_oom(e): raise
                    row['ll_s'] = 'out of memory'
                    if device.type == 'cuda': torch.cuda.empty_cache()
                rows.append(row); progress(f"chunks: {fmt_name}, batch {B}, {c * B} latents per call: {row['ll_s']}")
                if row['ll_s'] == 'out of memory': break
    return rows

def bench_rule(device, S):
    "log_likelihood over the decode floor (median of side-by-side ratios) per memory format, thread count (default and 1), batch and latents per decoder call."
    sync, K, rows, sizes = syncer(device), S['K'], [], S['rule_latents']
    threads = [torch.get_num_threads()] + ([1] if device.type == 'cpu' and torch.get_num_threads() > 1 else [])
    cases = [(fmt, n, B) for fmt in S['formats'] for n in threads for B in S['rule_batches']]
    default = torch.get_num_threads()
    try:
        for fmt, n_threads, B in cases:
            torch.set_num_threads(n_threads)
            model, x = mnist_model(device, memory_format=FORMATS[fmt]), images(B, device).contiguous(memory_format=FORMATS[fmt])
            fns = {L: (lambda c=chunk_for(L, B, K): model.log_likelihood(x, K=K, chunk_size=c)) for L in sizes}
            reps = side_by_side(model, K * B, floor_sizes(device, S), fns, S['repeat'], sync)
            row = dict(format=fmt, threads=n_threads, B=B, K=K, floor_s=median(reps, lambda r: r['floor']),
                       floor_latents=statistics.mode(r['floor_at'] for r in reps))
            for L in sizes:
                row[L] = median(reps, lambda r: r[L] / r['floor'])                     # log_likelihood / floor
                row[f'll_s_{L}'] = median(reps, lambda r: r[L])
                if device.type == 'cpu': row['cpu', L] = median(reps, lambda r: r['cpu', L] / r['cpu_floor'])
            rows.append(row); progress(f"rule: {fmt}, {n_threads} thread(s), batch {B}: floor {row['floor_s']:.3f} s")
    finally: torch.set_num_threads(default)
    return rows

def peak_memory(device, K, B=8, chunk_size=None):
    "Peak memory (MiB) of one `log_likelihood(x, K)` call: CUDA allocator peak, or the CPU process's resident-set growth (sampled every 2 ms)."
    if device.type == 'cuda':
        model, x = mnist_model(device), images(B, device)
        model.log_likelihood(x, k=2)
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        model.log_likelihood(x, K=K, chunk_size=chunk_size)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    code = (f"import os,threading,time,torch; from vae_nb.model import VAE; torch.manual_seed(0); m=VAE(**{CONFIG}).eval(); "
            f"x=torch.rand({B},{CONFIG['in_channels']},{CONFIG['input_size']},{CONFIG['input_size']})*2-1; m.log_likelihood(x,k=2); "
            f"page=os.sysconf('SC_PAGE_SIZE'); rss=lambda: int(open('/proc/self/statm').read().split()[1])*page; base=rss(); peak=[base]; done=[]\n"
            f"def watch():\n while not done: peak[0]=max(peak[0],rss()); time.sleep(0.002)\n"
            f"t=threading.Thread(target=watch); t.start(); m.log_likelihood(x,k={K},chunk_size={chunk_size}); done.append(1); t.join(); "
            f"print((peak[0]-base)/2**20)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    if out.returncode: raise RuntimeError(f"peak_memory subprocess failed: {out.stderr.strip().splitlines()[-1]}")
    return float(out.stdout.split()[-1])

def bench_memory(device, S):
    B = S['memory_batch']
    return [dict(B=B, K=K, peak_mib=peak_memory(device, K, B)) for K in S['memory_Ks']]

# ---- tables ----
def cell(v, fmt):
    "`v` formatted with `fmt`; strings (reasons, notes) as they are, None as a dash."
    return '—' if v is None else v.replace('|', '/') if isinstance(v, str) else fmt.format(v)

def table(rows, cols):
    "A markdown table of `rows` (dicts) with `cols` (key, header, format)."
    out = ['| ' + ' | '.join(h for _, h, _ in cols) + ' |', '|' + '---|' * len(cols)]
    for r in rows: out.append('| ' + ' | '.join(cell(r.get(k), fmt) for k, _, fmt in cols) + ' |')
    return '\n'.join(out)

def print_ll(rows, S):
    print(f"### log_likelihood, K = {S['K']}, default chunking (median seconds)\n")
    print(table(rows, [('B', 'batch', '{}'), ('floor_s', 'decode floor (s)', '{:.3f}'), ('ll_s', 'log_likelihood (s)', '{:.3f}'),
                       ('ll_over_floor', 'over floor', '{:.2f}×'), ('cpu_ll_over_floor', 'over floor, CPU time', '{:.2f}×'),
                       ('seed_s', 'seed loop (s)', '{:.3f}'),
                       ('speedup_over_seed', 'speed-up over seed', '{:.1f}×')]) + '\n')

def print_chunks(rows, S):
    print(f"### log_likelihood, K = {S['K']}: latents per decoder call and memory format (median seconds)\n")
    print(table(rows, [('format', 'memory format', '{}'), ('B', 'batch', '{}'), ('latents_per_call', 'latents per decoder call', '{}'),
                       ('ll_s', 'seconds', '{:.3f}')]) + '\n')

def print_rule(rows, S):
    head = [('format', 'memory format', '{}'), ('threads', 'threads', '{}'), ('B', 'batch', '{}'), ('floor_s', 'floor (s)', '{:.3f}'), ('floor_latents', 'floor at', '{}')]
    print(f"### log_likelihood over the decode floor, K = {S['K']}: memory format × threads × batch × latents per decoder call (median of side-by-side ratios, wall clock)\n")
    print(table(rows, head + [(L, str(L), '{:.2f}×') for L in S['rule_latents']]) + '\n')
    if any(('cpu', L) in r for r in rows for L in S['rule_latents']):
        print("The same, in process CPU time (what a busy machine disturbs least):\n")
        print(table(rows, head[:3] + [(('cpu', L), str(L), '{:.2f}×') for L in S['rule_latents']]) + '\n')

def print_memory(rows, S):
    print(f"### log_likelihood peak memory, batch {S['memory_batch']}\n")
    print(table(rows, [('K', 'K', '{}'), ('peak_mib', 'peak memory (MiB)', '{:.1f}')]) + '\n')

def jsonable(v):
    "`v` with tuple and int dict keys made strings, for JSON."
    if isinstance(v, dict): return {(k if isinstance(k, str) else ' '.join(map(str, k)) if isinstance(k, tuple) else str(k)): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)): return [jsonable(x) for x in v]
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('parts', nargs='*', default=list(PARTS), help=f"which benchmarks: {' '.join(PARTS)} (default: all)")
    p.add_argument('--device', default='cpu', help="cpu, cuda or cuda:N")
    p.add_argument('--smoke', action='store_true', help="every part at tiny sizes; exit 1 if any part (or train variant) fails")
    p.add_argument('--compile-backend', help="torch.compile backend for the train part (default: inductor; aot_eager with --smoke)")
    p.add_argument('--formats', default=','.join(FORMATS), help="memory formats for chunks and rule, comma-separated (default: %(default)s)")
    p.add_argument('--json', help="also write the raw results to this JSON file")
    a = p.parse_args(argv)
    if bad := [q for q in a.parts if q not in PARTS]: p.error(f"unknown part(s) {' '.join(bad)}; expected some of {' '.join(PARTS)}")
    try: device = torch.device(a.device)
    except RuntimeError as e: p.error(f"--device: {e}")
    if device.type == 'cuda' and not torch.cuda.is_available(): p.error(f"--device {a.device}: CUDA is not available here")
    S = dict(SMOKE if a.smoke else FULL)
    if a.compile_backend: S['compile_backend'] = a.compile_backend
    S['formats'] = a.formats.split(',')
    if bad := [f for f in S['formats'] if f not in FORMATS]: p.error(f"--formats: unknown {' '.join(bad)}; expected some of {','.join(FORMATS)}")
    print(f"machine: {machine(device)}\ncommand: python benchmarks/run.py {' '.join(sys.argv[1:] if argv is None else argv)}\n", flush=True)
    results, failed, t_all = {}, [], time.perf_counter()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    parts = dict(ll=(bench_ll, print_ll), chunks=(bench_chunks, print_chunks), rule=(bench_rule, print_rule),
                 memory=(bench_memory, print_memory))
    for name in PARTS:
        if name not in a.parts: continue
        t = time.perf_counter()
        try:
            if name in parts:
                results[name] = parts[name][0](device, S); parts[name][1](results[name], S)
            elif name == 'threads':
                import bench_threads
                results[name] = bench_threads.part_threads(device, S, table)
            else:
                import bench_train
                results[name] = getattr(bench_train, 'part_' + name)(device, S, table)
        except Exception as e:
            failed.append(name)
            print(f"**part `{name}` failed** after {time.perf_counter() - t:.1f} s:\n\n```\n{traceback.format_exc()}```\n", flush=True)
        else: print(f"(part `{name}`: {time.perf_counter() - t:.1f} s)\n", flush=True)
    print(f"total {time.perf_counter() - t_all:.1f} s" + (f"; FAILED: {' '.join(failed)}" if failed else ''))
    if a.json:
        with open(a.json, 'w') as f: json.dump(dict(machine=machine(device), sizes=S, results=jsonable(results), failed=failed), f, indent=1)
    return 1 if failed else 0

if __name__ == '__main__': sys.exit(main())
