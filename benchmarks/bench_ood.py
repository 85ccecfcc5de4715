"""Out-of-distribution scores: likelihood regret batched (vmapped encoder copies) against the one-image-at-a-time loop,
and the time per 1,000 images of each score (issue 17, item 4).

    python benchmarks/bench_ood.py [--checkpoint CKPT] [--threads 1] [--k 100] [--loop_images 4] [--smoke]

The model is the Fashion-MNIST one of `nbs/11_anomaly.ipynb` (1x32x32, z_dim 100, categorical likelihood), from
`--checkpoint` or freshly initialised (the timings do not depend on the weights). The images are random 8-bit ones.
Each timing is reported as wall seconds and as this process's CPU seconds (`time.process_time`): on a shared machine
the wall time depends on the other processes, while with one thread the CPU time measures the work itself.
Regret: `regret_score(batch_size=64)` on 64 images (B encoder copies as batched matrix products, one fused Adam)
against `regret_score(batched=False)` (a fresh encoder copy and Adam per image, as the reference code does) on
`--loop_images` images; both with 100 steps (`--steps`), run in turn `--repeats` times in this one process; the
speed-up is the median over the repeats of the ratio of CPU seconds per image (loop / batched).
Nothing here is asserted by the tests; `--smoke` runs every part at tiny sizes.
"""
import argparse, json, os, sys, time
os.environ.setdefault('OMP_NUM_THREADS', '1')
import vae_nb, torch
from vae_nb.model import VAE
from vae_nb.checkpoint import load_model
from vae_nb.ood import log_likelihood_score, likelihood_ratio_score, complexity_score, regret_score

def timed(f):
    "(result, wall seconds, CPU seconds) of one call of f."
    w, c = time.perf_counter(), time.process_time()
    r = f()
    return r, time.perf_counter() - w, time.process_time() - c

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--checkpoint', default=None); p.add_argument('--threads', type=int, default=1)
    p.add_argument('--k', type=int, default=100); p.add_argument('--steps', type=int, default=100)
    p.add_argument('--batch', type=int, default=64); p.add_argument('--loop_images', type=int, default=4)
    p.add_argument('--repeats', type=int, default=3); p.add_argument('--smoke', action='store_true')
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.smoke: a.k, a.steps, a.batch, a.loop_images, a.repeats = 2, 2, 4, 2, 2
    model = load_model(a.checkpoint) if a.checkpoint else VAE(1, 32, z_dim=100, likelihood='categorical').eval()
    background = VAE(**model.config).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (a.batch, 1, 32, 32), generator=g) / 127.5 - 1
    warm = x[:2]                                                     # first calls pay imports and vmap's set-up: not timed
    complexity_score(model, warm, k=1); regret_score(model, warm, steps=1); regret_score(model, warm[:1], steps=1, batched=False)
    rows = []
    def record(name, n, wall, cpu, **kw):
        r = dict(score=name, images=n, wall_s=round(wall, 2), cpu_s=round(cpu, 2), wall_s_per_1000=round(1000 * wall / n, 1),
                 cpu_s_per_1000=round(1000 * cpu / n, 1), images_per_s_cpu=round(n / cpu, 3), **kw)
        rows.append(r); print(json.dumps(r), flush=True)
    _, w, c = timed(lambda: log_likelihood_score(model, x, k=a.k, generator=g)); record('log_likelihood', len(x), w, c, k=a.k)
    _, w, c = timed(lambda: likelihood_ratio_score(model, background, x, k=a.k, generator=g)); record('likelihood_ratio', len(x), w, c, k=a.k)
    _, w, c = timed(lambda: complexity_score(model, x, k=a.k, generator=g)); record('complexity', len(x), w, c, k=a.k)
    xl, ratios = x[:a.loop_images], []
    for rep in range(a.repeats):                                     # interleaved: batched, loop, batched, loop, ...
        _, w, c = timed(lambda: regret_score(model, x, steps=a.steps, batch_size=a.batch, generator=g))
        record('regret (batched)', len(x), w, c, steps=a.steps, batch_size=a.batch, repeat=rep)
        _, w, c = timed(lambda: regret_score(model, xl, steps=a.steps, batched=False, generator=g))
        record('regret (loop)', len(xl), w, c, steps=a.steps, repeat=rep)
        fast, slow = rows[-2], rows[-1]
        ratios.append((fast['images_per_s_cpu'] / slow['images_per_s_cpu'],
                       (fast['images'] / fast['wall_s']) / (slow['images'] / slow['wall_s'])))
    med = lambda v: sorted(v)[len(v) // 2]
    print(json.dumps(dict(regret_speedup_cpu=round(med([r[0] for r in ratios]), 2), regret_speedup_wall=round(med([r[1] for r in ratios]), 2),
                          per_repeat_cpu=[round(r[0], 2) for r in ratios], repeats=a.repeats, threads=a.threads,
                          torch=torch.__version__)), flush=True)

if __name__ == '__main__': main()
