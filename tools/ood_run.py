"""The full run of `nbs/11_anomaly.ipynb`: Fashion-MNIST against MNIST at the literature's scale, on this CPU.

    python tools/ood_run.py [--run ood_run] [--minutes 30] [--score_minutes 15] [--k 10]

Trains the model (Fashion-MNIST's 60,000 training images) and the background model (the same images with a fraction
0.2 of the pixels replaced by noise) at once, one process per CPU core, each for whole epochs within `--minutes` of
wall time (an epoch is started only when the last one's time says it ends inside the budget). Then scores, again
in two processes: one the importance-sampled log p(x) of all 10,000 + 5,000 test images under both models
(`--k` samples) and their PNG lengths, the other the likelihood regret of a random subset, 64 images of each set in
turn while `--score_minutes` last. Writes into RUN: main.pt, background.pt (checkpoints, resumable),
train_main.json, train_background.json (epochs, seconds), scores.npz, and run.json (the settings and timings).
Every output is written to a temporary name and renamed, so an interrupted run leaves no half-written file.
A second call on the same RUN continues the training from the checkpoints for `--minutes` more, then scores again.
`--bound iwae` scores the regret's gain in the importance-weighted bound instead of the ELBO. The 28×28 images are
resized to 32×32 as the reference code does (`vae_nb.ood.resize_images`); `--pad` pads them with black instead, as
`get_datasets` gives them (until 2026-12-08 padding was the default and `--resize` chose resizing: that flag is still
taken). `--background_epochs N` trains the background model first, for N epochs, then the model for the rest of the
budget, each on all cores, instead of both at once on one core each.

One stage alone, as the notebook's side runs were made (each writes its own scores_*.npz; `merge` joins them):

    python tools/ood_run.py --run R --stage score:regret --bound iwae --sets in --n_regret 576 --score_minutes 60
    (RUN remembers its images, resized or padded, in images.json: a later call that differs is refused)
    python tools/ood_run.py --run R --stage merge
"""
import argparse, json, os, subprocess, sys, time
from pathlib import Path

SEEDS = dict(main=0, background=1)
STAGES = dict(train=('main', 'background'), score=('likelihood', 'regret'))   # each stage's two processes


def _atomic_json(path:Path, obj):
    from vae_nb.files import atomic_write
    atomic_write(path, json.dumps(obj, indent=1))


def _atomic_npz(path:Path, arrays:dict):
    import numpy as np
    from vae_nb.files import atomic_write
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _epochs(path:Path) -> int:
    "How many epochs the checkpoint at `path` holds."
    from vae_nb.checkpoint import load_checkpoint
    return len(load_checkpoint(path)['history'])


def _one_core(workers:int=1):
    import vae_nb, torch                    # vae_nb first: its OpenMP threads wait without spinning
    from vae_nb.cpu import set_chunk_workers
    torch.set_num_threads(1); set_chunk_workers(workers)   # one core per process (the two share the machine) unless told more


def _data(n:int|None=None, resize:bool=True):
    """Fashion-MNIST's training and test images and the mnist5k digits, in [-1, 1], resized to 32×32 as the reference
    code does (`resize_images`) or, without `resize`, padded with black (as `get_datasets` gives them); the first n of
    each with n (smoke runs)."""
    import torch
    from vae_nb.data import get_datasets, load_mnist5k, to_model_range
    from vae_nb.ood import resize_images
    train, test = get_datasets('fashion_mnist')
    a, _, b, _ = load_mnist5k()
    digits = torch.cat([a, b])[:, None]                                     # (5000, 1, 28, 28) uint8
    if not resize: return train.tfm(train.x[:n]), test.tfm(test.x[:n]), to_model_range(digits[:n])
    return resize_images(train.x[:n]), resize_images(test.x[:n]), resize_images(digits[:n])


def train(run:Path, name:str, minutes:float, n:int|None, resize:bool=True, workers:int=1, max_epochs:int|None=None):
    "Whole epochs of `name` ('main' or 'background') while they fit in `minutes` more (and, given `max_epochs`, up to that total); continues a checkpoint that is there."
    _one_core(workers)
    import torch
    from vae_nb.model import VAE
    from vae_nb.data import InMemoryLoader
    from vae_nb.train import fit
    from vae_nb.ood import perturb, FMNIST_OOD_CONFIG as C
    x_train, _, _ = _data(n, resize)
    seed = SEEDS[name]
    g = torch.Generator().manual_seed(seed)
    tfm = (lambda xb: perturb(xb, C['mu'], g)) if name == 'background' else None
    dl = InMemoryLoader(x_train, torch.zeros(len(x_train)), batch_size=C['batch_size'], shuffle=True, seed=seed, tfm=tfm)
    torch.manual_seed(seed)
    model, path, t0, times, history = VAE(**C['model']), run/f'{name}.pt', time.time(), [], []
    record = run/f'train_{name}.json'
    if path.exists():                       # an earlier run's checkpoint: continue it (the background's noise draws start afresh)
        from vae_nb.checkpoint import load_checkpoint
        history = load_checkpoint(path)['history']
        if record.exists(): times = json.loads(record.read_text())['seconds'][:len(history)]
    while max_epochs is None or len(history) < max_epochs:
        if times and time.time() - t0 + times[-1] > minutes * 60: break
        t, done = time.time(), len(history)
        history = fit(model, dl, epochs=done + 1, lr=C['lr'], device='cpu', seed=seed, progress=False, checkpoint=path,
                      resume=path if done else None, overwrite=done == 0, settings=dict(run=name))
        if len(history) == done: break      # Ctrl-C: fit kept the last whole epoch in the checkpoint and said so
        times.append(time.time() - t)
        print(f"{name}: epoch {len(history)} in {times[-1]:.0f} s, loss {history[-1]['loss']:.1f} nats "
              f"({model.bits_per_dim(-history[-1]['loss']):.3f} bits/dim)", flush=True)
        _atomic_json(record, dict(epochs=len(history), seconds=times, budget_minutes=minutes,   # after every epoch
                                  loss=[h['loss'] for h in history]))


def score(run:Path, part:str, k:int, minutes:float, n_max:int, n:int|None, bound:str='elbo', sets:str='in,out', resize:bool=True):
    "Scores of the test sets: part 'likelihood' (both models, all images) or 'regret' (subsets, for a time budget)."
    _one_core()
    import numpy as np, torch
    from vae_nb.checkpoint import load_model
    from vae_nb.ood import log_likelihood_score, png_bits, regret_score
    _, x_in, x_out = _data(n, resize)
    g = lambda seed: torch.Generator().manual_seed(seed)
    model = load_model(run/'main.pt')
    t0, epochs = time.time(), _epochs(run/'main.pt')
    if part == 'likelihood':
        background = load_model(run/'background.pt')
        s = dict(k=k, png_in=png_bits(x_in).numpy(), png_out=png_bits(x_out).numpy(), background_epochs=_epochs(run/'background.pt'))
        for key, m, x, seed in (('ll_in', model, x_in, 0), ('ll_out', model, x_out, 1),
                                ('bg_in', background, x_in, 2), ('bg_out', background, x_out, 3)):
            s[key] = log_likelihood_score(m, x, k=k, generator=g(seed)).numpy()
            print(f"{key}: {len(x)} images in {time.time() - t0:.0f} s", flush=True)
    else:
        sub_in = torch.randperm(len(x_in), generator=g(0))[:n_max]      # random subsets, scored 64 at a time in turn
        sub_out = torch.randperm(len(x_out), generator=g(1))[:n_max]
        gi, go, r_in, r_out, times = g(10), g(11), [], [], []       # each set its own generator: the sets may run apart
        sets = sets.split(',')
        for i in range(0, min(n_max, len(sub_in), len(sub_out)), 64):
            if times and time.time() - t0 + times[-1] > minutes * 60: break
            t = time.time()
            if 'in' in sets: r_in.append(regret_score(model, x_in[sub_in[i:i + 64]], bound=bound, generator=gi))
            if 'out' in sets: r_out.append(regret_score(model, x_out[sub_out[i:i + 64]], bound=bound, generator=go))
            times.append(time.time() - t)
            print(f"regret ({bound}, {'+'.join(sets)}): {i + 64} images of {'each set' if len(sets) > 1 else 'the set'} "
                  f"in {time.time() - t0:.0f} s", flush=True)
        key = 'regret' if bound == 'elbo' else f'regret_{bound}'
        s = {}                              # each file keeps the subset it scored: merge checks that they agree
        if r_in: s.update({f'{key}_in': torch.cat(r_in).numpy(), 'sub_in': sub_in[:len(r_in) * 64].numpy()})
        if r_out: s.update({f'{key}_out': torch.cat(r_out).numpy(), 'sub_out': sub_out[:len(r_out) * 64].numpy()})
        part = key + ('' if sets == ['in', 'out'] else '_' + '_'.join(sets))
    _atomic_npz(run/f'scores_{part}.npz', dict(s, model_epochs=epochs))
    _atomic_json(run/f'score_{part}.json', dict(seconds=time.time() - t0))


def merge(run:Path):
    "scores.npz: every scores_*.npz of RUN in one file (the likelihoods, the regret, any other regret run kept there)."
    import numpy as np
    s = {}
    for f in sorted(p for p in run.glob('scores_*.npz') if '.tmp' not in p.name):
        with np.load(f) as part:
            for k, v in part.items():
                if k in ('sub_in', 'sub_out', 'model_epochs') and k in s and not np.array_equal(s[k], v):
                    sys.exit(f"ood_run: {f.name} differs from the files before it in {k} (another subset, or an older "
                             "checkpoint): score it again")
                s[k] = v
    _atomic_npz(run/'scores.npz', s)


def _both(args:list, stage:str):
    "Run the two halves of a stage as two processes at once; fail if either fails."
    procs = [subprocess.Popen([sys.executable, __file__, *args, '--stage', f'{stage}:{p}']) for p in STAGES[stage]]
    try:
        while any(p.poll() is None for p in procs):
            if any(p.poll() for p in procs): raise SystemExit(f"ood_run: a {stage} process failed")
            time.sleep(1)
        if any(p.returncode for p in procs): raise SystemExit(f"ood_run: a {stage} process failed")
    finally:
        for p in procs:                     # one failed, or Ctrl-C: stop the other too
            if p.poll() is None: p.terminate(); p.wait()


def _resized(run:Path) -> bool|None:
    "Whether the run in RUN trained on resized images (True) or padded ones (False), from images.json or run.json; None: a new folder."
    if (run/'images.json').exists(): return json.loads((run/'images.json').read_text())['resize']
    if (run/'run.json').exists():
        a = json.loads((run/'run.json').read_text())
        return not a['pad'] if 'pad' in a else a.get('resize', False)   # until 2026-12-08 runs padded unless --resize
    return False if (run/'main.pt').exists() else None                 # a checkpoint without a record: made before --resize


def _one(args:list, stage:str):
    "Run one stage as a process of its own; fail if it fails."
    if subprocess.run([sys.executable, __file__, *args, '--stage', stage]).returncode:
        raise SystemExit(f"ood_run: the {stage} process failed")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--run', default='ood_run', help='folder of the outputs')
    ap.add_argument('--minutes', type=float, default=30, help='training budget (wall) of both models together')
    ap.add_argument('--score_minutes', type=float, default=15, help='budget of the regret (wall)')
    ap.add_argument('--k', type=int, default=10, help='importance samples per image for log p(x)')
    ap.add_argument('--n_regret', type=int, default=1024, help='at most this many images of each set for the regret')
    ap.add_argument('--bound', default='elbo', choices=('elbo', 'iwae'), help="the regret's gain in the ELBO or the IWAE bound")
    ap.add_argument('--pad', action='store_true', help='pad the 28×28 images to 32×32 with black instead of resizing them (the reference code)')
    ap.add_argument('--resize', action='store_true', help=argparse.SUPPRESS)   # the default now; taken for earlier commands
    ap.add_argument('--background_epochs', type=int, default=None,
                    help='train the background model for this many epochs first, then the model for the rest of --minutes, '
                         'each on all cores; default: both at once, one core each, for --minutes')
    ap.add_argument('--workers', type=int, default=1, help=argparse.SUPPRESS)   # a training stage run alone: cores for its batch
    ap.add_argument('--sets', default='in,out', help=argparse.SUPPRESS)   # the regret of one set only: 'in' or 'out'
    ap.add_argument('--n', type=int, default=None, help=argparse.SUPPRESS)   # smoke runs: the first n images of each set
    ap.add_argument('--stage', default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.pad and a.resize: ap.error("--pad and --resize: expected one of them, not both")
    if a.background_epochs is not None and a.background_epochs < 1:
        ap.error(f"--background_epochs: expected an integer >= 1, got {a.background_epochs}")
    run = Path(a.run); run.mkdir(parents=True, exist_ok=True)
    if a.stage == 'merge': return merge(run)
    known = _resized(run)                   # a run's images stay as its training had them
    if known is not None and known == a.pad:
        ap.error(f"{run} holds a run on {'resized' if known else 'padded'} images: "
                 f"{'drop --pad' if known else 'add --pad'} to continue or score it")
    if not (run/'images.json').exists(): _atomic_json(run/'images.json', dict(resize=not a.pad))   # what 11_anomaly reads
    sets = a.sets.split(',')
    if not sets or any(x not in ('in', 'out') for x in sets): ap.error(f"--sets: expected in, out or in,out; got {a.sets!r}")
    if a.stage:
        kind, _, part = a.stage.partition(':')
        if part not in STAGES.get(kind, ()):
            ap.error(f"--stage: expected merge or one of {', '.join(f'{k}:{p}' for k, ps in STAGES.items() for p in ps)}; got {a.stage!r}")
        if kind == 'train': train(run, part, a.minutes, a.n, not a.pad, a.workers, a.background_epochs if part == 'background' else None)
        else: score(run, part, a.k, a.score_minutes, a.n_regret, a.n, a.bound, a.sets, not a.pad)
        return
    stage_args = lambda minutes: ['--run', a.run, '--minutes', str(minutes), '--score_minutes', str(a.score_minutes), '--k', str(a.k),
            '--n_regret', str(a.n_regret), '--bound', a.bound] + (['--pad'] if a.pad else []) + ([] if a.n is None else ['--n', str(a.n)])
    args = stage_args(a.minutes)
    t0 = time.time()
    if a.background_epochs is None: _both(args, 'train')
    else:                                   # one after the other, each on every core: the background first, to its epochs
        from vae_nb.cpu import cpu_cores
        cores = str(cpu_cores())
        _one(args + ['--workers', cores, '--background_epochs', str(a.background_epochs)], 'train:background')
        left = a.minutes - (time.time() - t0) / 60
        if left <= 0: print(f"ood_run: the background model used the whole budget; the model trains at most its first epoch", flush=True)
        left = max(left, 0)
        _one(stage_args(left) + ['--workers', cores], 'train:main')
    t1 = time.time()
    _both(args, 'score'); t2 = time.time()
    merge(run)
    import torch
    _atomic_json(run/'run.json', dict(vars(a), train_s=t1 - t0, score_s=t2 - t1, torch=torch.__version__,
                                      cpu=torch.backends.cpu.get_cpu_capability(), cores=os.cpu_count()))
    print(f"ood_run: trained {t1 - t0:.0f} s, scored {t2 - t1:.0f} s; wrote {run}/", flush=True)


if __name__ == '__main__': main()
