"""vae_nb against pythae's `VAE` on the CPU: the same networks, weights, data, seeds, batch size and learning rate.

Each library trains in a child process of its own (pythae usually lives in another virtual environment), paused at
the end of every epoch inside the library's own training loop (a `fit` callback; a pythae `TrainingCallback`); the
parent releases them in turn, one epoch at a time (A B B A A B ...), so that both see the same machine. Each child
times from its release to its next pause. The trained weights come back to this process, which scores both models
with one estimator: vae_nb's `VAE.log_likelihood` (importance sampling, the same noise for both) on the test images.

The objectives are equal up to a constant: pythae's `reconstruction_loss='mse'` is ½‖x − μ‖² summed over the pixels
(0.5 * F.mse_loss(..., reduction='none').sum(-1)) plus the closed-form KL, averaged over the batch; vae_nb's default
Gaussian likelihood (unit variance) gives ½‖x − μ‖² + (D/2)·log 2π plus the same KL, averaged over the batch. Same
gradients; the losses differ by (D/2)·log 2π = 940.99 nats for D = 32·32.

Usage (pythae in its own environment, as its pins may not match this project's):

    python -m venv VENV && VENV/bin/pip install torch==<this torch> torchvision==<this torchvision> pythae fastcore
    python benchmarks/vs_pythae.py --pythae-python VENV/bin/python
    python benchmarks/vs_pythae.py --smoke        # tiny run, exits 0; skips with one line when pythae is missing

(`fastcore` is there because the pythae child builds the networks with `vae_nb.model`, read from this checkout.)
"""
import os, sys
ORIGINAL_ENV = dict(os.environ)      # before vae_nb's import sets OMP_WAIT_POLICY: the pythae child gets the user's own
import argparse, json, math, shutil, statistics, subprocess, tempfile, time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
D_HALF_LOG_2PI = 0.5 * 32 * 32 * math.log(2 * math.pi)       # the constant between the two losses (D = 1·32·32)

# ---------------------------------------------------------------------------------------------------- children
def _protocol():
    "A line-buffered channel to the parent on the original stdout; the libraries' own prints go to stderr."
    out = os.fdopen(os.dup(1), 'w', buffering=1)
    os.dup2(2, 1)
    return out

class _Finish(Exception):
    "Raised at a pause point when the parent says 'finish': leaves the library's training loop with the weights as they are."

class _Pauser:
    "Pause point between epochs: report the seconds since the last release, wait for the next command."
    def __init__(self, out, profile_epoch=None, profile_path=None):
        self.out, self.t0, self.epoch, self.prof = out, None, 0, None
        self.profile_epoch, self.profile_path = profile_epoch, profile_path
    def wait(self):
        cmd = sys.stdin.readline().strip()
        if cmd not in ('go', 'finish'): raise SystemExit(f"vs_pythae child: expected 'go' or 'finish', got {cmd!r}")
        self.epoch += cmd == 'go'
        if cmd == 'go' and self.epoch == self.profile_epoch:
            import torch
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]); self.prof.__enter__()
        self.t0 = time.perf_counter()
        return cmd
    def pause(self, loss):
        dt = time.perf_counter() - self.t0
        if self.prof is not None:
            self.prof.__exit__(None, None, None)
            table = self.prof.key_averages().table(sort_by='cpu_time_total', row_limit=18, max_name_column_width=60)
            Path(self.profile_path).write_text(table); self.prof = None
        self.out.write(f"epoch {dt:.6f} {loss:.6f}\n")
        if self.wait() == 'finish': raise _Finish

def _load_work(work):
    import numpy as np
    meta = json.loads((work / 'meta.json').read_text())
    with np.load(work / 'data.npz', allow_pickle=False) as d: x = d['x_train']
    with np.load(work / 'init.npz', allow_pickle=False) as d: init = {k: d[k] for k in d.files}
    return meta, x, init

def _state_arrays(model):
    return {k: v.detach().contiguous().cpu().numpy() for k, v in model.state_dict().items()}

def _save_arrays(path, arrays):
    import numpy as np
    tmp = path.with_suffix('.tmp.npz')
    np.savez(tmp, **arrays); os.replace(tmp, path)

def _warm_up_torch():
    "Pay torch's one-time lazy import (torch._dynamo, on the first optimiser's construction) before the clock runs, in both."
    import torch
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])

def _objective_check(model, vae, xb):
    "vae_nb's loss − pythae's on one batch with the same ε (expected (D/2)·log 2π), and their largest gradient difference."
    import torch
    params = list(vae.parameters())                      # the same tensors inside pythae's model
    torch.manual_seed(123); lp = model({'data': xb}).loss
    gp = torch.autograd.grad(lp, params)
    torch.manual_seed(123); _, nll, kl = vae(xb); lv = (nll + kl).mean()
    gv = torch.autograd.grad(lv, params)
    return (lv - lp).item(), max((a - b).abs().max().item() for a, b in zip(gv, gp))

def child_vae_nb(args):
    NAME = 'vae_nb'
    import vae_nb                                        # first: vae_nb's OpenMP setting, as its users get it
    import numpy as np, torch
    from vae_nb.model import VAE
    from vae_nb.data import InMemoryLoader
    from vae_nb.train import fit, prepare_model
    from vae_nb.cpu import use_cpu_threads
    out, work = _protocol(), Path(args.work)
    meta, x, init = _load_work(work)
    x = torch.from_numpy(x)
    model = VAE(**meta['config'])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in init.items()})
    model = prepare_model(model, 'cpu')                  # what `vae_nb_train` does: channels_last on the CPU
    threads = use_cpu_threads(model, x[:1], None if args.threads == 'default' else int(args.threads))
    dl = InMemoryLoader(x, torch.zeros(len(x), dtype=torch.long), batch_size=meta['batch_size'], shuffle=True, seed=args.train_seed)
    _warm_up_torch()
    out.write(f"ready {threads} nan nan {os.environ.get('OMP_WAIT_POLICY', '')}\n")
    p = _Pauser(out, args.profile_epoch, work / f'{NAME}_profile.txt')
    if p.wait() == 'finish': return
    class Pause:
        def on_epoch_end(self, model, record, history): p.pause(record['loss'])
    try: fit(model, dl, epochs=args.epochs, lr=meta['lr'], device='cpu', seed=args.train_seed, callbacks=[Pause()])
    except _Finish: pass
    _save_arrays(work / 'vae_nb.npz', _state_arrays(model))
    out.write("done\n")

def child_pythae(args):
    NAME = 'pythae'
    import numpy as np, torch                            # first: torch's own OpenMP defaults, as pythae's users get them
    from pythae.models import VAE as PythaeVAE, VAEConfig
    from pythae.models.nn import BaseEncoder, BaseDecoder
    from pythae.models.base.base_utils import ModelOutput
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback
    sys.path.insert(0, str(REPO))
    from vae_nb.model import VAE                         # the networks: the very modules vae_nb trains
    if args.pythae_blocks == 'plain':                    # the decoder's up blocks computed as written (upsample, then convolve)
        import vae_nb.model; vae_nb.model.FOLD_MIN_SIDE = 10**9
    out, work = _protocol(), Path(args.work)
    meta, x, init = _load_work(work)
    if args.threads != 'default': torch.set_num_threads(int(args.threads))
    vae = VAE(**meta['config'])
    vae.load_state_dict({k: torch.from_numpy(v) for k, v in init.items()})
    z_dim = meta['config']['z_dim']

    class Encoder(BaseEncoder):
        def __init__(self, net): super().__init__(); self.net = net
        def forward(self, x):
            mu, logvar = self.net(x).chunk(2, dim=1)
            return ModelOutput(embedding=mu, log_covariance=logvar)
    class Decoder(BaseDecoder):
        def __init__(self, net): super().__init__(); self.net = net
        def forward(self, z): return ModelOutput(reconstruction=self.net(z))

    c = meta['config']
    cfg = VAEConfig(input_dim=(c['in_channels'], c['input_size'], c['input_size']), latent_dim=z_dim, reconstruction_loss='mse')
    model = PythaeVAE(cfg, encoder=Encoder(vae.encoder), decoder=Decoder(vae.decoder))
    tcfg = BaseTrainerConfig(output_dir=str(work / 'pythae_out'), num_epochs=args.epochs, learning_rate=meta['lr'],
                             per_device_train_batch_size=meta['batch_size'], per_device_eval_batch_size=meta['batch_size'],
                             optimizer_cls='Adam', seed=args.train_seed, no_cuda=True)
    _warm_up_torch()
    gap, grad_diff = _objective_check(model, vae, torch.from_numpy(x[:meta['batch_size']]))   # before training (pythae reseeds)
    out.write(f"ready {torch.get_num_threads()} {gap:.6f} {grad_diff:.3e} {os.environ.get('OMP_WAIT_POLICY', '')}\n")
    p = _Pauser(out, args.profile_epoch, work / f'{NAME}_profile.txt')
    class Pause(TrainingCallback):
        def __init__(self): self.loss = float('nan')
        def on_epoch_end(self, training_config, **kw): p.pause(self.loss)
    pause = Pause()
    if p.wait() == 'finish': return
    pipeline = TrainingPipeline(model=model, training_config=tcfg)
    # pythae computes the epoch loss in `train_step`; wrap it to see the number (no change to what it runs)
    from pythae.trainers import BaseTrainer
    orig = BaseTrainer.train_step
    def train_step(self, epoch):
        loss = orig(self, epoch); pause.loss = float(loss); return loss
    BaseTrainer.train_step = train_step
    try: pipeline(train_data=torch.from_numpy(x), callbacks=[pause])
    except _Finish: pass
    _save_arrays(work / 'pythae.npz', _state_arrays(vae))
    out.write("done\n")

# ---------------------------------------------------------------------------------------------------- parent
class Child:
    def __init__(self, name, python, work, threads, log, epochs, profile_epoch=None, train_seed=0, blocks='same'):
        cmd = [python, str(Path(__file__).resolve()), '--child', name, '--work', str(work), '--threads', str(threads),
               '--epochs', str(epochs), '--train-seed', str(train_seed), '--pythae-blocks', blocks] + ([] if profile_epoch is None else ['--profile-epoch', str(profile_epoch)])
        env = dict(ORIGINAL_ENV)          # as the user's shell has it: vae_nb's child sets its own OpenMP policy on import
        self.name, self.log = name, log
        self.p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1,
                                  env=env, cwd=str(REPO))
        words = self.read('ready')
        self.threads, self.gap, self.grad_diff = int(words[1]), float(words[2]), float(words[3])
        self.omp_wait = words[4] if len(words) > 4 else ''
    def read(self, what):
        line = self.p.stdout.readline()
        if not line.startswith(what):
            self.p.kill(); self.log.flush()
            tail = Path(self.log.name).read_text()[-3000:]
            raise RuntimeError(f"{self.name} child: expected {what!r}, got {line!r}; its stderr ends:\n{tail}")
        return line.split()
    def send(self, cmd): self.p.stdin.write(cmd + '\n'); self.p.stdin.flush()
    def epoch(self):
        self.send('go'); w = self.read('epoch'); return float(w[1]), float(w[2])
    def finish(self):
        self.send('finish'); self.read('done'); self.p.wait(timeout=600)

def pythae_available(python):
    r = subprocess.run([python, '-c', 'import pythae, torch; print(torch.__version__)'], capture_output=True, text=True,
                       env=ORIGINAL_ENV)
    return r.stdout.strip() if r.returncode == 0 else None

def prepare(work, n_train, epochs, seed):
    "Data (the same float tensors for both), the initial weights and the settings, written for the children."
    import numpy as np, torch
    from vae_nb.data import load_mnist5k, to_model_range, MNIST5K_CONFIG
    from vae_nb.model import VAE
    xtr, _, xte, _ = load_mnist5k()
    x_train, x_test = to_model_range(xtr[:n_train]), to_model_range(xte)
    config = MNIST5K_CONFIG['model']
    torch.manual_seed(seed)
    model = VAE(**config)
    np.savez(work / 'data.npz', x_train=x_train.numpy())
    _save_arrays(work / 'init.npz', _state_arrays(model))
    meta = dict(config=config, lr=MNIST5K_CONFIG['lr'], batch_size=MNIST5K_CONFIG['batch_size'], epochs=epochs, seed=seed)
    (work / 'meta.json').write_text(json.dumps(meta))
    return meta, x_train, x_test

def race(label, pythae_python, work, epochs, vae_threads, pythae_threads, logs, profile_epoch=None, train_seed=0, blocks='same'):
    "One round: both children trained `epochs` epochs, released in turn (A B B A ...); per-epoch seconds and losses."
    for f in ('vae_nb.npz', 'pythae.npz'): (work / f).unlink(missing_ok=True)
    shutil.rmtree(work / 'pythae_out', ignore_errors=True)
    kids = {'vae_nb': Child('vae_nb', sys.executable, work, vae_threads, logs['vae_nb'], epochs, profile_epoch, train_seed),
            'pythae': Child('pythae', pythae_python, work, pythae_threads, logs['pythae'], epochs, profile_epoch, train_seed, blocks)}
    times, losses = {k: [] for k in kids}, {k: [] for k in kids}
    try:
        for e in range(epochs):
            order = ('vae_nb', 'pythae') if e % 2 == 0 else ('pythae', 'vae_nb')
            for k in order:
                t, l = kids[k].epoch(); times[k].append(t); losses[k].append(l)
            print(f"  {label}, epoch {e + 1}: vae_nb {times['vae_nb'][-1]:.2f} s, pythae {times['pythae'][-1]:.2f} s", flush=True)
        for k in kids: kids[k].finish()
    finally:
        for c in kids.values():
            if c.p.poll() is None: c.p.kill()
    return dict(label=label, times=times, losses=losses, threads={k: c.threads for k, c in kids.items()},
                gap=kids['pythae'].gap, grad_diff=kids['pythae'].grad_diff,
                omp_wait={k: c.omp_wait for k, c in kids.items()})

def log_likelihoods(work, meta, x_test, k, seed):
    "log p(x) per test image of both trained models, by vae_nb's importance sampling with the same noise for both."
    import numpy as np, torch
    from vae_nb.model import VAE
    out = {}
    for name in ('vae_nb', 'pythae'):
        model = VAE(**meta['config'])
        with np.load(work / f'{name}.npz', allow_pickle=False) as d:
            model.load_state_dict({kk: torch.from_numpy(d[kk]) for kk in d.files})
        model.eval()
        out[name] = model.log_likelihood(x_test, k=k, generator=torch.Generator().manual_seed(seed)).double()
    return out

def mean_se(t): return t.mean().item(), (t.std().item() / math.sqrt(len(t)) if len(t) > 1 else float('nan'))

def versions(pythae_python):
    import numpy, torch
    code = ("import importlib.metadata as m, sys, torch, numpy; print(sys.version.split()[0], torch.__version__, numpy.__version__, "
            "m.version('pythae'), m.version('pydantic'))")
    r = subprocess.run([pythae_python, '-c', code], capture_output=True, text=True, env=ORIGINAL_ENV)
    cpu = next((l.split(':', 1)[1].strip() for l in Path('/proc/cpuinfo').read_text().splitlines() if l.startswith('model name')),
               'unknown CPU') if Path('/proc/cpuinfo').exists() else 'unknown CPU'
    import vae_nb
    git = lambda *a: subprocess.run(['git', '-C', str(REPO), *a], capture_output=True, text=True).stdout.strip()
    sha = git('rev-parse', '--short', 'HEAD')
    where = (f"commit {sha}{', with uncommitted changes in vae_nb/' if git('status', '--porcelain', '--', 'vae_nb') else ''}"
             if sha else 'not a git checkout')
    return (f"vae_nb {vae_nb.__version__} from {Path(vae_nb.__file__).parent} ({where}): Python {sys.version.split()[0]}, torch {torch.__version__}, "
            f"numpy {numpy.__version__}\npythae side ({pythae_python}): Python, torch, numpy, pythae, pydantic = {r.stdout.strip()}\n"
            f"CPU: {cpu}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores usable")

def table(rounds, ll, n_train):
    rows = ["| round | library | threads | s / epoch (median) | epochs (s) | images/s | vae_nb speed / pythae speed | last train loss (vae_nb scale) |",
            "|---|---|---|---|---|---|---|---|"]
    for r in rounds:
        med = {k: statistics.median(v) for k, v in r['times'].items()}
        ratio = med['pythae'] / med['vae_nb']
        for k in ('vae_nb', 'pythae'):
            loss = r['losses'][k][-1] + (D_HALF_LOG_2PI if k == 'pythae' else 0)
            rows.append(f"| {r['label']} | {k} | {r['threads'][k]} | {med[k]:.2f} | {', '.join(f'{t:.2f}' for t in r['times'][k])} "
                        f"| {n_train / med[k]:.0f} | {f'**{ratio:.2f}×**' if k == 'vae_nb' else ''} | {loss:.2f} |")
    own = [r for r in rounds if r['label'].startswith('own defaults')]
    if len(own) > 1:
        pooled = {k: statistics.median([t for r in own for t in r['times'][k]]) for k in ('vae_nb', 'pythae')}
        rows += ["", f"Own defaults, the {len(own)} seeds' epochs pooled: vae_nb {pooled['vae_nb']:.2f} s, pythae {pooled['pythae']:.2f} s "
                     f"per epoch (medians): vae_nb speed / pythae speed = **{pooled['pythae'] / pooled['vae_nb']:.2f}×**"]
    if ll:
        rows += ["", "| training seed | vae_nb: test log-likelihood | pythae: test log-likelihood | vae_nb − pythae (paired) |",
                 "|---|---|---|---|"]
        for seed, d in ll.items():
            (mv, sv), (mp, sp), (md, sd) = mean_se(d['vae_nb']), mean_se(d['pythae']), mean_se(d['vae_nb'] - d['pythae'])
            rows.append(f"| {seed} | {mv:.2f} ± {sv:.2f} | {mp:.2f} ± {sp:.2f} | {md:+.2f} ± {sd:.2f} |")
        if len(ll) > 1:
            import torch
            per_seed = {k: torch.tensor([d[k].mean().item() for d in ll.values()], dtype=torch.float64) for k in ('vae_nb', 'pythae')}
            (mv, sv), (mp, sp) = mean_se(per_seed['vae_nb']), mean_se(per_seed['pythae'])
            md, sd = mean_se(per_seed['vae_nb'] - per_seed['pythae'])
            rows.append(f"| mean of {len(ll)} seeds (± SE between seeds) | {mv:.2f} ± {sv:.2f} | {mp:.2f} ± {sp:.2f} | {md:+.2f} ± {sd:.2f} |")
    return '\n'.join(rows)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--pythae-python', default=os.environ.get('VAE_NB_PYTHAE_PYTHON', sys.executable),
                    help="the Python that has pythae (default: $VAE_NB_PYTHAE_PYTHON, else this one)")
    ap.add_argument('--epochs', type=int, default=5)
    ap.add_argument('--n-train', type=int, default=4000)
    ap.add_argument('--n-test', type=int, default=1000)
    ap.add_argument('--k', type=int, default=200, help="importance samples per test image for the log-likelihood")
    ap.add_argument('--seed', type=int, default=0, help="seed of the initial weights, shared by both")
    ap.add_argument('--seeds', default='0,1,2', help="training seeds (data order and noise) of the 'default' rounds; "
                    "each gets its own log-likelihoods, so the spread between them is the run-to-run noise")
    ap.add_argument('--rounds', default='default,same', help="'default' (each library's own thread choice), "
                    "'same' (both at 1 thread, then both at all cores), 'profile' (torch.profiler over the 2nd of 2 epochs at "
                    "each library's own threads; not timed); comma-separated")
    ap.add_argument('--smoke', action='store_true', help="tiny run (256 images, 1 epoch); skips when pythae is missing")
    ap.add_argument('--pythae-blocks', choices=('same', 'plain'), default='same',
                    help="'same': pythae trains vae_nb's very modules, whose up blocks run as one transposed convolution on "
                         "the CPU (vae_nb.model.UpBlock); 'plain': its up blocks run as written, upsampling then convolving, "
                         "as the same architecture in plain PyTorch would")
    ap.add_argument('--child', choices=('vae_nb', 'pythae'), help=argparse.SUPPRESS)
    ap.add_argument('--work', help=argparse.SUPPRESS)
    ap.add_argument('--threads', default='default', help=argparse.SUPPRESS)
    ap.add_argument('--train-seed', type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument('--profile-epoch', type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == 'vae_nb': return child_vae_nb(args)
    if args.child == 'pythae': return child_pythae(args)
    if args.smoke: args.epochs, args.n_train, args.n_test, args.k, args.rounds, args.seeds = 1, 256, 64, 4, 'default', '0'
    seeds = [int(v) for v in args.seeds.split(',')]
    tv = pythae_available(args.pythae_python)
    if tv is None:
        print(f"vs_pythae: skipped: pythae is not importable by {args.pythae_python} (pass --pythae-python VENV/bin/python)")
        return 0
    import vae_nb, torch                                   # vae_nb first, as its users import it
    from vae_nb.cpu import cpu_cores
    if tv != torch.__version__: print(f"vs_pythae: note: torch {torch.__version__} here, {tv} on the pythae side")
    with tempfile.TemporaryDirectory(prefix='vs_pythae_') as tmp:
        work = Path(tmp)
        meta, x_train, x_test = prepare(work, args.n_train, args.epochs, args.seed)
        x_test = x_test[:args.n_test]
        logs = {k: open(work / f'{k}.log', 'w') for k in ('vae_nb', 'pythae')}
        rounds, ll = [], {}
        for what in args.rounds.split(','):
            if what == 'default':
                for seed in seeds:
                    rounds.append(race(f'own defaults, seed {seed}', args.pythae_python, work, args.epochs, 'default', 'default',
                                       logs, train_seed=seed, blocks=args.pythae_blocks))
                    ll[seed] = log_likelihoods(work, meta, x_test, args.k, args.seed)
            elif what == 'profile':
                profiled = race('profile (not timed)', args.pythae_python, work, 2, 'default', 'default', logs, profile_epoch=2,
                                blocks=args.pythae_blocks)
                for k in ('vae_nb', 'pythae'):
                    print(f"\n{k}, torch.profiler over epoch 2 of 2 (own default threads, {profiled['threads'][k]}):")
                    print((work / f'{k}_profile.txt').read_text())
            elif what == 'same':
                for n in sorted({1, cpu_cores()}):
                    rounds.append(race(f'both {n} thread{"s" if n > 1 else ""}', args.pythae_python, work, args.epochs, n, n, logs,
                                       train_seed=seeds[0], blocks=args.pythae_blocks))
            else: raise SystemExit(f"--rounds: expected 'default', 'same' or 'profile', got {what!r}")
        print()
        print(versions(args.pythae_python))
        if rounds: print(f"OMP_WAIT_POLICY: vae_nb child {rounds[0]['omp_wait']['vae_nb'] or 'unset'}, "
                         f"pythae child {rounds[0]['omp_wait']['pythae'] or 'unset'}")
        if rounds: print(f"objective check (one batch, the same ε, initial weights): vae_nb loss − pythae loss = {rounds[0]['gap']:.4f} "
                         f"(expected (D/2)·log 2π = {D_HALF_LOG_2PI:.4f}), largest gradient difference {rounds[0]['grad_diff']:.1e}")
        print(f"data: {args.n_train} mnist5k training images, batch {meta['batch_size']}, Adam lr {meta['lr']}, {args.epochs} epochs; "
              f"initial weights from seed {args.seed}, training seeds {', '.join(map(str, seeds))} (the 'same' rounds: "
              f"{seeds[0]}); log-likelihood: k = {args.k} on {len(x_test)} test images, the same noise for both\n")
        print(table(rounds, ll, args.n_train))
        print(f"\ncommand: python {' '.join(['benchmarks/vs_pythae.py', *(argv if argv is not None else sys.argv[1:])])}")
        for f in logs.values(): f.close()
    return 0

if __name__ == '__main__': sys.exit(main())
