"Training throughput (fit vs a bare loop; eager, channels_last, bf16 autocast and compiled steps), FLOPs and evaluation at scale, for `benchmarks/run.py`."
import contextlib, math, os, shutil, statistics, subprocess, sys, tempfile, time
import torch
from torch.utils.flop_counter import FlopCounterMode
from vae_nb.model import VAE
from vae_nb.data import load_mnist5k, to_model_range, InMemoryLoader
from vae_nb.train import fit
try: from vae_nb.checkpoint import save_checkpoint
except ImportError: from vae_nb.train import save_checkpoint     # before vae_nb.checkpoint was split from train
from run import CONFIG, forward, progress, syncer, timeit

def train_data(device, n=None):
    "The first `n` (default all 4,000) mnist5k training images in [-1, 1] and their labels, on `device`."
    x, y, _, _ = load_mnist5k()
    return to_model_range(x[:n]).to(device), y[:n].to(device)

def fresh_model(device):
    "A freshly initialised model with `vae_nb_train`'s default configuration."
    torch.manual_seed(0)
    return VAE(**CONFIG).to(device)

def loss_of(model, x):
    "The training loss: the negative ELBO, averaged over the batch."
    _, nll, kl = forward(model, x)
    return (nll + kl).mean()

def bare_loop(model, x, batch_size=64, sync=None):
    "Images/s of the ceiling: forward, backward and Adam step over in-memory batches, nothing else."
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    def epoch():
        for xb in x.split(batch_size):
            loss = loss_of(model, xb)
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    epoch()                                            # warm-up
    if sync: sync()
    t = time.perf_counter(); epoch()
    if sync: sync()
    return len(x) / (time.perf_counter() - t)

def fit_speed(model, x, y, device, batch_size=64, epochs=2, callbacks=()):
    "Images/s of `fit` on an in-memory loader (the last epoch: the first warms up)."
    dl = InMemoryLoader(x, y, batch_size=batch_size, shuffle=True)
    hist = fit(model, dl, epochs=epochs, device=device, progress=False, callbacks=callbacks)
    return len(x) / hist[-1]['seconds']

def cli_fit_speed(x, y, device, batch_size=64, epochs=7, cores=None):
    """`fit` set up as `vae_nb_train` sets it up (`prepare_model`: channels_last on the CPU, threads by the model's size,
    so one intra-op thread and the batch split over the cores for the mnist5k model): (images/s of each epoch after the
    first, the matrix-product peak with `cores` threads measured right after each of those epochs, the threads `fit`
    used). Pairing each epoch with a peak taken seconds later keeps a shared machine's drift out of their ratio.
    torch's thread count is restored afterwards."""
    try: from vae_nb.train import prepare_model
    except ImportError: return None, None, None
    before = torch.get_num_threads(); cores = cores or before
    speeds, peaks = [], []
    class Paired:
        def on_epoch_end(self, model, record, history):
            if record['epoch'] == 1: return                        # the first epoch warms up
            speeds.append(len(x) / record['seconds'])
            t = torch.get_num_threads(); torch.set_num_threads(cores)
            try: peaks.append(matmul_peak(device))
            finally: torch.set_num_threads(t)
    try:
        model = prepare_model(fresh_model(device), device)
        threads = torch.get_num_threads()
        fit_speed(model, x, y, device, batch_size, epochs, callbacks=[Paired()])
        return speeds, peaks, threads
    finally: torch.set_num_threads(before)

@contextlib.contextmanager
def blocks_as_written():
    "Inside the block the decoder's up blocks run as written (upsample, then convolve), not folded (vae_nb.model.UpBlock)."
    import vae_nb.model as M
    old = getattr(M, 'FOLD_MIN_SIDE', None)
    if old is not None: M.FOLD_MIN_SIDE = 10**9
    try: yield
    finally:
        if old is not None: M.FOLD_MIN_SIDE = old

def flops_per_image(model, device, batch_size=64):
    "FLOPs of one training step (forward + backward) and of one forward pass, per image."
    x = torch.rand(batch_size, CONFIG['in_channels'], CONFIG['input_size'], CONFIG['input_size'], device=device) * 2 - 1
    with FlopCounterMode(display=False) as fc: loss_of(model, x).backward()
    train = fc.get_total_flops() / batch_size
    with FlopCounterMode(display=False) as fc, torch.no_grad(): forward(model, x)
    return train, fc.get_total_flops() / batch_size

def matmul_peak(device, n=2048, repeat=10, sync=None):
    "FLOP/s of a large float32 matrix product: the machine's practical peak."
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    if sync: sync()
    t = time.perf_counter()
    for _ in range(repeat): a @ b
    if sync: sync()
    return 2 * n**3 * repeat / (time.perf_counter() - t)

# ---- training step variants ----
VARIANTS = ('eager', 'channels_last', 'bf16 autocast', 'compiled')

def unsupported(variant, device):
    "Why `variant` cannot run on `device` (known before trying), or None."
    if variant == 'bf16 autocast' and device.type == 'cuda' and not torch.cuda.is_bf16_supported(): return 'unsupported: this GPU has no bf16'
    if variant == 'compiled' and sys.platform == 'win32' and device.type == 'cpu': return 'unsupported: torch.compile on Windows CPU'
    return None

def train_step(model, variant, device, backend='inductor'):
    "One Adam step on a batch, as `variant` does it: eager, channels_last, under bf16 autocast, or with a compiled loss."
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.compile(lambda x: loss_of(model, x), backend=backend) if variant == 'compiled' else lambda x: loss_of(model, x)
    amp = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if variant == 'bf16 autocast' else contextlib.nullcontext
    def step(x):
        with amp(): loss = loss_fn(x)
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return loss
    return step

def failure(e):
    "A one-line reason for the table: the exception's type and first line."
    return f"failed: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"

def prepare_variant(variant, device, x, B, S):
    """The table row of `variant` at batch `B`, with its first step timed (compilation included) and two warm-up steps
    done, and a function that runs one pass over `x` (returning the last loss); None when it cannot run, the reason in the row."""
    row, sync = dict(variant=variant, B=B), syncer(device)
    if variant == 'compiled': row['variant'] = f"compiled ({S['compile_backend']})"
    if why := unsupported(variant, device): return dict(row, note=why), None
    if len(x) < 3 * B: return dict(row, note=f"skipped: {len(x)} images < 3 batches"), None
    try:
        model, fmt = fresh_model(device), torch.channels_last if variant == 'channels_last' else torch.contiguous_format
        model.to(memory_format=fmt)
        batches = x[:len(x) // B * B].contiguous(memory_format=fmt).split(B)   # whole batches only: one shape
        step = train_step(model, variant, device, S['compile_backend'])
        if sync: sync()
        t = time.perf_counter(); step(batches[0])
        if sync: sync()
        row.update(first_step_s=time.perf_counter() - t, images=len(batches) * B, steps=len(batches))
        for xb in batches[1:3]: step(xb)                                      # warm-up
    except Exception as e: return dict(row, note=failure(e), failed=True), None
    def one_pass():
        for xb in batches: loss = step(xb)
        return loss
    return row, one_pass

@contextlib.contextmanager
def empty_compile_caches():
    "Inside the block torch.compile starts from empty on-disk caches (inductor's and Triton's), so compile times are cold ones."
    saved = {k: os.environ.get(k) for k in ('TORCHINDUCTOR_CACHE_DIR', 'TRITON_CACHE_DIR')}
    with tempfile.TemporaryDirectory() as d:
        for k in saved: os.environ[k] = os.path.join(d, k.lower())
        try: yield
        finally:
            for k, v in saved.items():
                if v is None: os.environ.pop(k, None)
                else: os.environ[k] = v

def time_variants(device, x, B, S):
    """One row per training-step variant at batch `B`: images/s in the steady state (median over `S['repeat']` passes
    over `x`, the variants taking turns so that a busy machine slows them alike), first step and compile seconds."""
    sync = syncer(device)
    torch._dynamo.reset()                                                     # a fresh compilation for each batch size
    prepared = [prepare_variant(v, device, x, B, S) for v in VARIANTS]
    times = {i: [] for i, (_, run) in enumerate(prepared) if run}
    for _ in range(S['repeat']):
        for i in list(times):
            row, run = prepared[i]
            try:
                if sync: sync()
                t = time.perf_counter(); loss = run()
                if sync: sync()
                times[i].append(time.perf_counter() - t)
                if not math.isfinite(loss.item()): row['note'] = 'loss not finite'
            except Exception as e:
                row.update(note=failure(e), failed=True); del times[i]
    rows = [row for row, _ in prepared]
    for i, ts in times.items():
        row = rows[i]; t = statistics.median(ts)
        row.update(img_s=row['images'] / t, step_s=t / row['steps'])
        if row['variant'].startswith('compiled'): row['compile_s'] = row['first_step_s'] - row['step_s']
    eager = rows[VARIANTS.index('eager')].get('img_s')
    for row in rows:
        if eager and row.get('img_s'): row['vs_eager'] = row['img_s'] / eager
        progress(f"train: {row['variant']}, batch {B}: {row.get('img_s') or row.get('note')}")
    torch._dynamo.reset()
    return rows

def part_train(device, S, table):
    "Training throughput: `fit` vs a bare loop at batch 64, FLOPs, and the step variants at each batch size."
    sync = syncer(device)
    x, y = train_data(device, S['train_images'])
    ceiling = bare_loop(fresh_model(device), x, sync=sync)
    speed = fit_speed(fresh_model(device), x, y, device)
    cli_speeds, cli_peaks, cli_threads = (cli_fit_speed(x, y, device, epochs=2 if S['smoke'] else 7) if device.type == 'cpu'
                                          else (None, None, None))
    train_flops, fwd_flops = flops_per_image(fresh_model(device), device)          # as run (up blocks folded on the CPU)
    with blocks_as_written(): model_flops, _ = flops_per_image(fresh_model(device), device)   # the model as written
    peak = matmul_peak(device, n=256 if S['smoke'] else 2048, sync=sync)          # with this process's threads (all cores)
    r = dict(bare_img_s=ceiling, fit_img_s=speed, fit_over_bare=speed / ceiling,
             train_mflop_per_img=train_flops / 1e6, model_mflop_per_img=model_flops / 1e6, fwd_mflop_per_img=fwd_flops / 1e6,
             achieved_gflops=ceiling * train_flops / 1e9, matmul_gflops=peak / 1e9, threads=torch.get_num_threads())
    r['fraction_of_peak'] = r['achieved_gflops'] / r['matmul_gflops']
    if cli_speeds:
        fractions = [v * model_flops / q for v, q in zip(cli_speeds, cli_peaks)]   # each epoch against its own peak
        cli_speed = statistics.median(cli_speeds)
        r.update(cli_fit_img_s=cli_speed, cli_threads=cli_threads, cli_gflops=cli_speed * model_flops / 1e9,
                 cli_gflops_run=cli_speed * train_flops / 1e9, cli_peak_gflops=statistics.median(cli_peaks) / 1e9,
                 cli_fraction=statistics.median(fractions), cli_fraction_range=(min(fractions), max(fractions)),
                 cli_fraction_run=statistics.median(fractions) * train_flops / model_flops)
    print(f"### Training, batch 64, mnist5k in memory ({len(x):,} images)\n")
    print(table([r], [('bare_img_s', 'bare loop (img/s)', '{:.0f}'), ('fit_img_s', 'fit (img/s)', '{:.0f}'),
                      ('fit_over_bare', 'fit / bare', '{:.0%}'), ('train_mflop_per_img', 'train MFLOP/img', '{:.1f}'),
                      ('achieved_gflops', 'achieved GFLOP/s', '{:.1f}'), ('matmul_gflops', 'matmul GFLOP/s', '{:.1f}'),
                      ('fraction_of_peak', 'of matmul peak', '{:.0%}')]) + '\n', flush=True)
    if cli_speeds:
        lo, hi = r['cli_fraction_range']
        print(f"`fit` as `vae_nb_train` runs it ({cli_threads} intra-op thread(s), the batch split over the cores when that is 1), "
              f"{len(cli_speeds)} epochs after a warm-up, each followed by a {r['threads']}-thread matrix-product peak: "
              f"**{cli_speed:,.0f} img/s** (median), peak {r['cli_peak_gflops']:.1f} GFLOP/s (median). With the model's FLOPs "
              f"as written ({model_flops / 1e6:.1f} MFLOP/img, the up blocks unfolded): {r['cli_gflops']:.1f} GFLOP/s, "
              f"**{r['cli_fraction']:.0%}** of the peak (median of the epochs' ratios, {lo:.0%}–{hi:.0%}); with the FLOPs it "
              f"executes ({train_flops / 1e6:.1f} MFLOP/img): {r['cli_fraction_run']:.0%}.\n", flush=True)
    with empty_compile_caches(): rows = [row for B in S['train_batches'] for row in time_variants(device, x, B, S)]
    print(f"### Training step variants (forward, backward, Adam; median of {S['repeat']} passes over {len(x):,} images, variants taking turns)\n")
    print(table(rows, [('variant', 'variant', '{}'), ('B', 'batch', '{}'), ('img_s', 'img/s', '{:.0f}'), ('vs_eager', 'vs eager', '{:.2f}×'),
                       ('first_step_s', 'first step (s)', '{:.2f}'), ('compile_s', 'compile (s), empty cache', '{:.1f}'), ('note', 'note', '{}')]) + '\n')
    if S['smoke'] and (bad := [q for q in rows if q.get('failed')]):
        raise RuntimeError(f"{len(bad)} training variant(s) failed: " + '; '.join(f"{q['variant']} @ {q['B']}: {q['note']}" for q in bad))
    return dict(fit=r, variants=rows)

def eval_at_scale(device, k=1000, n=None, batch_size=100, train_images=None):
    "Wall time of `vae_nb_eval CKPT --k K` over the mnist5k test split (or its first n images), on a 1-epoch checkpoint."
    with tempfile.TemporaryDirectory() as d:
        model = fresh_model(device); x, y = train_data(device, train_images)
        fit(model, InMemoryLoader(x, y, batch_size=64, shuffle=True), epochs=1, device=device, progress=False)
        ckpt = os.path.join(d, 'model.pt'); save_checkpoint(ckpt, model.cpu(), None, 1, [], dataset='mnist5k')
        args = [ckpt, '--k', str(k), '--device', str(device), '--batch_size', str(batch_size)] + (['--n', str(n)] if n else [])
        script = shutil.which('vae_nb_eval', path=os.path.dirname(sys.executable)) or shutil.which('vae_nb_eval')
        if script is None: raise RuntimeError("vae_nb_eval: console script not found (pip install -e . first)")
        t = time.perf_counter()   # the console script, run by this interpreter
        out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True)
        wall = time.perf_counter() - t
        if out.returncode: raise RuntimeError(f"vae_nb_eval {' '.join(args[1:])} failed: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
        return dict(k=k, n=n, wall_s=wall, result=out.stdout.strip().splitlines()[-1])

def part_eval(device, S, table):
    r = eval_at_scale(device, S['eval_k'], S['eval_n'], S['eval_batch'], S['train_images'])
    what = f"the first {r['n']:,}" if r['n'] else "the 1,000"
    print(f"### vae_nb_eval --k {r['k']} over {what} mnist5k test images\n\nwall time {r['wall_s']:.1f} s; output: `{r['result']}`\n")
    return r
