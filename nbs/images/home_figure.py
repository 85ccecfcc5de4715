"""Build the home page's picture of results from a run of `vae_nb_train` (the default main job on mnist5k).

    python nbs/images/home_figure.py RUN_FOLDER [--out nbs/images/mnist5k_results.png]

Three rows, all from the run's checkpoint: 32 samples from the prior; 16 test digits above their
reconstructions; two slerp interpolations between the posterior means of two test digits (3 → 8 and 0 → 6).
"""
import vae_nb  # first, before torch (see benchmarks/bench_busy.py)
import argparse, os
from pathlib import Path
import torch
from vae_nb.checkpoint import load_model
from vae_nb.data import load_mnist5k, to_model_range
from vae_nb.model import seeded_generator
from vae_nb.viz import image_grid, grid_figure, posterior_means, decode_latents, interpolate


def home_figure(run:Path, steps:int=16):
    "The figure: samples, reconstructions and interpolations of the checkpoint in `run`."
    model = load_model(run/'checkpoint.pt')
    _, _, x_test, y_test = load_mnist5k()
    x_test = to_model_range(x_test)
    with torch.no_grad(): samples = model.sample(2 * steps, generator=seeded_generator(0, model.device))
    x = x_test[:steps]
    recon = decode_latents(model, posterior_means(model, x))
    first = lambda d: (y_test == d).nonzero()[0].item()
    strips = [interpolate(model, x_test[first(a)], x_test[first(b)], steps=steps) for a, b in ((3, 8), (0, 6))]
    grids = [image_grid(samples, nrow=steps), image_grid(torch.cat([x, recon]), nrow=steps),
             image_grid(torch.cat(strips), nrow=steps)]
    titles = ['samples from the prior', 'test digits (top) and their reconstructions (bottom)',
              'slerp between the posterior means of two test digits: 3 → 8, 0 → 6']
    return grid_figure(grids, titles, nrows=3)


if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('run', type=Path, help='folder of a vae_nb_train run (holds checkpoint.pt)')
    p.add_argument('--out', type=Path, default=Path(__file__).parent/'mnist5k_results.png')
    a = p.parse_args()
    fig = home_figure(a.run)
    tmp = a.out.with_name(a.out.name + '.tmp.png')
    fig.savefig(tmp, dpi=fig.dpi)
    from PIL import Image  # matplotlib's own dependency
    Image.open(tmp).convert('L').save(tmp, optimize=True)  # grey digits, black text: one channel is enough
    os.replace(tmp, a.out)
    print(f"wrote {a.out.name} ({a.out.stat().st_size // 1024} KB)")
