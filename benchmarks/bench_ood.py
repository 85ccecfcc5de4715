"""Out-of-distribution scores: likelihood regret batched (vmapped encoder copies) against the one-image-at-a-time loop,
and the time per 1,000 images of each score (issue 17, item 4).

    python benchmarks/bench_ood.py [--checkpoint CKPT] [--threads 1] [--k 100] [--loop_images 4] [--keep_freed_memory] [--smoke]

The model is the Fashion-MNIST one of `nbs/11_anomaly.ipynb` (1x32x32, z_dim 100, categorical likelihood), from
`--checkpoint` or freshly initialised (the timings do not depend on the weights). The images are random 8-bit ones.
Each timing is reported as wall seconds and as this process's CPU seconds (`time.process_time`): on a shared machine
the wall time depends on the other processes, while with one thread the CPU time measures the work itself.
Regret: `regret_score(batch_size=64)` on 64 images (B encoder copies as batched matrix products, one fused Adam)
against `regret_score(batched=False)` (a fresh encoder copy and Adam per image, as the reference code does) on
`--loop_images` images; both with 100 steps (`--steps`), run in turn `--repeats` times in this one process; the
speed-up is the median over the repeats of the ratio of CPU seconds per image (loop / batched).
The regret's arithmetic is counted with `torch.utils.flop_counter` (the FLOPs of one image's regret at `--steps`), and
set against a matrix-product peak measured in the same process (1024×1024 `torch.mm`, best of 5): the loop's and the
batch's GFLOP/s say how close each is to what this CPU can do, and so what speed-up is possible at all.
Nothing here is asserted by the tests; `--smoke` runs every part at tiny sizes.
"""
import argparse, json, os, sys, time
os.environ.setdefault('OMP_NUM_THREADS', '1')
import vae_nb, torch
from vae_nb.model import VAE
from vae_nb.checkpoint import load_model
from vae_nb.cpu import keep_freed_memory
from vae_nb.ood import log_likelihood_score, likelihood_ratio_score, complexity_score, regret_score

def timed(f):
    "(result, wall seconds, CPU seconds) of one call of f."
    w, c = time.perf_counter(), time.process_time()
    r = f()
    return r, time.perf_counter() - w, time.process_time() - c

def regret_flops(model, x1, steps):
    "FLOPs of one image's regret with `steps` Adam steps (two ELBO estimates of 16 draws, and the steps), counted by torch."
    from torch.utils.flop_counter import FlopCounterMode
    def count(n):
        with FlopCounterMode(display=False) as fc: regret_score(model, x1, steps=n, batched=False)
        return fc.get_total_flops()
    f0, f1 = count(0), count(1)
    return f0 + steps * (f1 - f0), f1 - f0

def matmul_peak(n=1024, repeats=5):
    "GFLOP/s of the best of `repeats` n×n float32 matrix products, in this process."
    a, b = torch.randn(n, n), torch.randn(n, n); a @ b
    best = min(timed(lambda: a @ b)[1] for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--checkpoint', default=None); p.add_argument('--threads', type=int, default=1)
    p.add_argument('--k', type=int, default=100); p.add_argument('--steps', type=int, default=100)
    p.add_argument('--batch', type=int, default=64); p.add_argument('--loop_images', type=int, default=4)
    p.add_argument('--repeats', type=int, default=3); p.add_argument('--smoke', action='store_true')
    p.add_argument('--keep_freed_memory', action='store_true', help="glibc keeps freed memory, as vae_nb_score's process does (vae_nb.cpu.keep_freed_memory)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.keep_freed_memory: print(json.dumps(dict(keep_freed_memory=keep_freed_memory())), flush=True)
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
    per_image, per_step = regret_flops(model, x[:1], a.steps)
    peak = matmul_peak()
    print(json.dumps(dict(regret_gflop_per_image=round(per_image / 1e9, 3), regret_mflop_per_image_step=round(per_step / 1e6, 1),
                          matmul_peak_gflops=round(peak, 1), threads=a.threads)), flush=True)
    xl, ratios = x[:a.loop_images], []
    for rep in range(a.repeats):                                     # interleaved: batched, loop, batched, loop, ...
        _, w, c = timed(lambda: regret_score(model, x, steps=a.steps, batch_size=a.batch, generator=g))
        record('regret (batched)', len(x), w, c, steps=a.steps, batch_size=a.batch, repeat=rep,
               gflops=round(per_image * len(x) / c / 1e9, 1))
        _, w, c = timed(lambda: regret_score(model, xl, steps=a.steps, batched=False, generator=g))
        record('regret (loop)', len(xl), w, c, steps=a.steps, repeat=rep, gflops=round(per_image * len(xl) / c / 1e9, 1))
        fast, slow = rows[-2], rows[-1]
        ratios.append((fast['images_per_s_cpu'] / slow['images_per_s_cpu'],
                       (fast['images'] / fast['wall_s']) / (slow['images'] / slow['wall_s'])))
    med = lambda v: sorted(v)[len(v) // 2]
    print(json.dumps(dict(regret_speedup_cpu=round(med([r[0] for r in ratios]), 2), regret_speedup_wall=round(med([r[1] for r in ratios]), 2),
                          per_repeat_cpu=[round(r[0], 2) for r in ratios], repeats=a.repeats, threads=a.threads,
                          matmul_peak_gflops=round(peak, 1), loop_share_of_peak=round(rows[-1]['gflops'] / peak, 2),
                          batched_share_of_peak=round(rows[-2]['gflops'] / peak, 2),
                          torch=torch.__version__)), flush=True)

if __name__ == '__main__': main()
