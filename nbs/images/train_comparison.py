#!/usr/bin/env python
"""The figure and the numbers of `03_train`'s *The training kit on mnist5k*: a plain run beside a run with the kit.

    OMP_NUM_THREADS=1 python nbs/images/train_comparison.py          # about 6 minutes on one CPU thread

Both runs train `vae_nb_train`'s default model for mnist5k (`MNIST5K_CONFIG`) from the same initial weights, on the
same 3,600 training digits (seed 0), validated on the 400 digits that `valid_fraction=0.1` holds out of the training
set; the 1,000 test digits are used only for the final importance-sampled log-likelihood (k = 100).

- plain: Adam at the constant lr 4e-3 for all the epochs;
- kit: the same peak lr after a linear warm-up of 2 epochs, cosine decay to 0 at the last epoch, an EMA of the
  weights (decay 0.995: a horizon of 200 steps, 3.5 epochs of 57 steps; 0.999 suits runs of 10,000 steps and more),
  early stopping with patience 5 (best.pt), the health monitor, and TensorBoard, whose event file is read back with
  tensorboard's `EventAccumulator` and plotted.

Writes nbs/images/train_comparison.png and nbs/images/train_comparison.json next to this file.
"""
import vae_nb  # first, before torch: its OpenMP threads then wait without spinning
import argparse, json, os, platform, sys, tempfile, time
from pathlib import Path

import torch
from vae_nb.model import VAE
from vae_nb.data import get_dataloaders, MNIST5K_CONFIG
from vae_nb.train import fit, evaluate
from vae_nb.checkpoint import load_model, best_path
from vae_nb.monitor import HealthMonitor, TensorBoardLogger

HERE = Path(__file__).resolve().parent
SKIP = 5   # epochs left off the scale of the top row
TAGS = ['train/loss', 'valid/elbo', 'train/lr', 'train/grad_norm', 'train/kl', 'health/active_units']


def model0() -> VAE:
    "The default mnist5k model, with the same initial weights every time."
    torch.manual_seed(0)
    return VAE(**MNIST5K_CONFIG['model'])


def test_ll(model:VAE, test_dl, k:int) -> dict:
    "Test ELBO and log-likelihood (k importance samples, seed 0) of `model`, rounded for the record."
    r = evaluate(model, test_dl, k=k, seed=0)
    return {key: round(r[key], 2) for key in ('elbo', 'log_likelihood')} | dict(k=k, n=r['n'])


def read_scalars(log_dir:Path) -> dict:
    "Every scalar of the event files in `log_dir`, read back with tensorboard's EventAccumulator: {tag: [[step, value]]}."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir)); acc.Reload()
    return {tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()['scalars']}


def curves(history:list) -> dict:
    "The per-epoch numbers the figure plots, rounded."
    keys = ('epoch', 'loss', 'valid_elbo', 'lr')
    return {key: [round(r[key], 6 if key == 'lr' else 2) if key != 'epoch' else r[key] for r in history] for key in keys}


def plot(res:dict, path:Path):
    "Top: train loss and validation ELBO per epoch of both runs; bottom: the kit run's TensorBoard scalars."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig = plt.figure(figsize=(11, 5.6), dpi=90)
    grid = fig.add_gridspec(2, 4, height_ratios=[1.25, 1], hspace=0.55, wspace=0.38)
    runs = (('plain', 'plain: constant lr', 'C0'), ('kit', 'EMA + warm-up/cosine + early stopping', 'C3'))
    for col, (key, title) in enumerate((('loss', 'train loss (nats/image)'), ('valid_elbo', 'validation ELBO (nats/image)'))):
        ax = fig.add_subplot(grid[0, 2 * col:2 * col + 2])
        for name, label, colour in runs:
            c = res['runs'][name]['curves']
            ax.plot(c['epoch'], c[key], color=colour, label=label, lw=1.4)
        # the first epochs (the kit's EMA still close to the initial weights) are far off the scale of the rest
        lo = min(min(res['runs'][n]['curves'][key][SKIP:]) for n, _, _ in runs)
        hi = max(max(res['runs'][n]['curves'][key][SKIP:]) for n, _, _ in runs)
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        if key == 'valid_elbo':
            best = res['runs']['kit']['best_epoch']
            ax.axvline(best, color='C3', ls=':', lw=1)
            ax.annotate(f'best.pt (epoch {best}) ', (best, 0.04), xycoords=('data', 'axes fraction'), color='C3',
                        fontsize=8, ha='right')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10); ax.set_xlabel('epoch', fontsize=9); ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if col == 0: ax.legend(fontsize=8)
    tb = res['runs']['kit']['tensorboard']
    for col, tag in enumerate(('train/lr', 'train/grad_norm', 'train/kl', 'health/active_units')):
        ax = fig.add_subplot(grid[1, col])
        steps, values = zip(*tb[tag])
        ax.plot(steps, values, color='C3', lw=1.4, marker='.', ms=3)
        ax.set_title(f"TensorBoard: {tag}", fontsize=9); ax.set_xlabel('epoch', fontsize=8)
        ax.tick_params(labelsize=7); ax.grid(alpha=0.3); ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.savefig(path, bbox_inches='tight', format='png'); plt.close(fig)


def main(epochs:int, k:int, out:Path):
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    cfg = MNIST5K_CONFIG
    train_dl, valid_dl, test_dl = get_dataloaders('mnist5k', batch_size=cfg['batch_size'], valid_fraction=0.1, seed=0)
    common = dict(epochs=epochs, lr=cfg['lr'], device='cpu', seed=0, progress=False)
    kit = dict(ema=0.995, schedule='cosine', warmup_epochs=2, patience=5)
    res = dict(command='OMP_NUM_THREADS=1 python nbs/images/train_comparison.py' + (f' --epochs {epochs}' if epochs != 30 else '')
                       + (f' --k {k}' if k != 100 else ''),
               data=dict(dataset='mnist5k', train=train_dl.n, valid=valid_dl.n, test=test_dl.n, batch_size=cfg['batch_size']),
               model=cfg['model'], epochs=epochs, lr=cfg['lr'], kit=kit, torch=torch.__version__,
               python=platform.python_version(), runs={})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the plain run: its last epoch is what it gives
        t = time.perf_counter()
        plain = model0()
        h = fit(plain, train_dl, valid_dl, **common)
        res['runs']['plain'] = dict(curves=curves(h), epochs_run=len(h), seconds=round(time.perf_counter() - t, 1),
                                    test=test_ll(plain, test_dl, k))
        print(f"plain: {len(h)} epochs, test {res['runs']['plain']['test']}", file=sys.stderr, flush=True)
        # the kit: its best epoch (best.pt), EMA weights, and the raw weights of that epoch beside them
        t = time.perf_counter()
        ckpt = tmp/'checkpoint.pt'
        monitor = HealthMonitor(valid_dl)
        logger = TensorBoardLogger(tmp/'tensorboard', every=10, n_samples=16)
        h = fit(model0(), train_dl, valid_dl, **common, **kit, checkpoint=ckpt, callbacks=[monitor, logger])
        seconds = round(time.perf_counter() - t, 1)
        best = best_path(ckpt)
        res['runs']['kit'] = dict(curves=curves(h), epochs_run=len(h), seconds=seconds,
                                  stopped_early=bool(h[-1].get('stopped_early')),
                                  best_epoch=max(h, key=lambda r: r['valid_elbo'])['epoch'],
                                  active_units=[r['active_units'] for r in h],
                                  test=test_ll(load_model(best), test_dl, k),
                                  test_raw_weights=test_ll(load_model(best, ema=False), test_dl, k),
                                  tensorboard=read_scalars(tmp/'tensorboard'))
        print(f"kit: {len(h)} epochs, best {res['runs']['kit']['best_epoch']}, test {res['runs']['kit']['test']}, "
              f"raw {res['runs']['kit']['test_raw_weights']}", file=sys.stderr, flush=True)
    missing = [t for t in TAGS if t not in res['runs']['kit']['tensorboard']]
    if missing: sys.exit(f"train_comparison: the event file lacks the scalars {missing}")
    res['seconds'] = round(time.perf_counter() - t0, 1)
    out.mkdir(parents=True, exist_ok=True)
    plot(res, out/'train_comparison.png.tmp')
    os.replace(out/'train_comparison.png.tmp', out/'train_comparison.png')
    (out/'train_comparison.json.tmp').write_text(json.dumps(res, indent=1) + '\n')
    os.replace(out/'train_comparison.json.tmp', out/'train_comparison.json')
    print(f"train_comparison: {res['seconds']:.0f} s; wrote {out/'train_comparison.png'} and {out/'train_comparison.json'}")


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--epochs', type=int, default=30, help='epochs of each run (the kit run may stop earlier)')
    ap.add_argument('--k', type=int, default=100, help='importance samples per test image')
    ap.add_argument('--out', type=Path, default=HERE, help='folder for the PNG and the JSON')
    ap.add_argument('--plot_only', action='store_true', help='redraw the PNG from the JSON, without training')
    a = ap.parse_args()
    if a.plot_only: plot(json.loads((a.out/'train_comparison.json').read_text()), a.out/'train_comparison.png')
    else: main(a.epochs, a.k, a.out)
