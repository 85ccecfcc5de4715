"""Nearest 2× upsampling + 3×3 convolution computed as one stride-2 transposed convolution (`vae_nb.model.UpBlock`):
per decoder block and for whole models, training steps and decoding, folded against as written, side by side.

`python benchmarks/bench_fold.py [--threads 1] [--repeats 7]`. The two ways take turns in one process; times are
medians. `FOLD_MIN_SIDE` is the rule this measures: a block runs folded on the CPU when its input is at least that
wide. Nothing here is asserted by the tests.
"""
import argparse, statistics, time
import vae_nb
import torch
import vae_nb.model as M
from vae_nb.cpu import keep_freed_memory
from vae_nb.data import MNIST5K_CONFIG

def timed(f, n):
    t = time.perf_counter()
    for _ in range(n): f()
    return (time.perf_counter() - t) / n

def side_by_side(fns, repeats, n):
    "Median seconds per call of each function in `fns` ({name: (setup, f)}), taking turns; setup() switches the way."
    for setup, f in fns.values(): setup(); f()
    ts = {k: [] for k in fns}
    for _ in range(repeats):
        for k, (setup, f) in fns.items(): setup(); ts[k].append(timed(f, n))
    return {k: statistics.median(v) for k, v in ts.items()}

def ways(min_side, min_channels_no_grad=None):
    "Setups for the plain and the folded way (without gradients: folded from `min_channels_no_grad` output channels, or the rule)."
    channels = M.FOLD_MIN_CHANNELS_NO_GRAD if min_channels_no_grad is None else min_channels_no_grad
    def plain(): M.FOLD_MIN_SIDE = 10**9
    def folded(): M.FOLD_MIN_SIDE, M.FOLD_MIN_CHANNELS_NO_GRAD = min_side, channels
    return plain, folded

BLOCKS = [(64, 32, 2), (32, 16, 4), (16, 8, 8), (8, 8, 16), (256, 128, 2), (128, 64, 4), (64, 32, 8), (32, 32, 16)]

def per_block(B, repeats):
    "Each block of the default mnist5k decoder's shape (and one of features=32), forward + backward, both ways."
    rows = []
    for ci, co, S in BLOCKS:
        blk = M.up_block(ci, co).to(memory_format=torch.channels_last)
        x = torch.randn(B, ci, S, S).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        params = [x, *blk.parameters()]
        step = lambda: torch.autograd.grad(blk(x).sum(), params)
        plain, folded = ways(1)
        r = side_by_side(dict(plain=(plain, step), folded=(folded, step)), repeats, 20)
        rows.append((f"{ci}→{co}, {S}→{2 * S}", r['plain'], r['folded']))
    return rows

def per_block_decode(n, repeats):
    "The same blocks forward only, without gradients (decoding `n` latents), both ways: folded at any width here."
    rows = []
    for ci, co, S in BLOCKS:
        blk = M.up_block(ci, co).to(memory_format=torch.channels_last)
        x = torch.randn(n, ci, S, S).contiguous(memory_format=torch.channels_last)
        def f():
            with torch.inference_mode(): blk(x)
        plain, folded = ways(1, 0)
        r = side_by_side(dict(plain=(plain, f), folded=(folded, f)), repeats, 10)
        rows.append((f"{ci}→{co}, {S}→{2 * S}", r['plain'], r['folded']))
    return rows

def whole(features, B, repeats, min_side):
    "A training step (forward, backward) at batch B and decoding 256 latents, for the mnist5k model with `features`."
    cfg = dict(MNIST5K_CONFIG['model'])
    if features: cfg.update(encoder_features=features, decoder_features=features)
    torch.manual_seed(0); m = M.VAE(**cfg).to(memory_format=torch.channels_last)
    params = list(m.parameters())
    x = (torch.rand(B, 1, 32, 32) * 2 - 1).contiguous(memory_format=torch.channels_last)
    def step():
        _, nll, kl = m(x, check=False); torch.autograd.grad((nll + kl).sum(), params)
    z = torch.randn(256, cfg['z_dim'])
    def decode():
        with torch.inference_mode(): m.decoder(z)
    plain, folded = ways(min_side)
    r = side_by_side(dict(plain=(plain, step), folded=(folded, step)), repeats, 10)
    d = side_by_side(dict(plain=(plain, decode), folded=(folded, decode)), repeats, 5)
    _, forced = ways(min_side, 0)                     # decoding with every block of side >= min_side folded
    f = side_by_side(dict(plain=(plain, decode), folded=(forced, decode)), repeats, 5)
    return r, d, f

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--threads', type=int, default=1); p.add_argument('--repeats', type=int, default=7)
    a = p.parse_args(argv)
    keep_freed_memory(); torch.set_num_threads(a.threads)
    rule, rule_channels = M.FOLD_MIN_SIDE, M.FOLD_MIN_CHANNELS_NO_GRAD
    print(f"torch {torch.__version__}, {a.threads} thread(s), channels_last, medians of {a.repeats} turns\n")
    print("| block (channels, side) | batch | as written ms | folded ms | folded speed-up |\n|---|---|---|---|---|")
    for B in (32, 64):
        for name, t0, t1 in per_block(B, a.repeats): print(f"| {name} | {B} | {t0 * 1e3:.2f} | {t1 * 1e3:.2f} | {t0 / t1:.2f}× |")
    print("\nForward only, without gradients (decoding 256 latents), every block folded:\n")
    print("| block (channels, side) | as written ms | folded ms | folded speed-up |\n|---|---|---|---|")
    for name, t0, t1 in per_block_decode(256, a.repeats): print(f"| {name} | {t0 * 1e3:.2f} | {t1 * 1e3:.2f} | {t0 / t1:.2f}× |")
    print(f"\nWhole models, folded from side {rule} (the rule; without gradients, from {rule_channels} output channels):\n")
    print("| model | train step batch | as written ms | folded ms | speed-up | decode 256 latents/s as written | by the rule | speed-up | all folded | speed-up |\n|---|---|---|---|---|---|---|---|---|---|")
    for features in (0, 32):
        for B in (32, 64):
            r, d, f = whole(features, B, a.repeats, rule)
            name = "mnist5k default (16/8 features)" if not features else f"features {features}"
            print(f"| {name} | {B} | {r['plain'] * 1e3:.1f} | {r['folded'] * 1e3:.1f} | {r['plain'] / r['folded']:.2f}× "
                  f"| {256 / d['plain']:,.0f} | {256 / d['folded']:,.0f} | {d['plain'] / d['folded']:.2f}× "
                  f"| {256 / f['folded']:,.0f} | {f['plain'] / f['folded']:.2f}× |")
    M.FOLD_MIN_SIDE, M.FOLD_MIN_CHANNELS_NO_GRAD = rule, rule_channels

if __name__ == '__main__': main()
