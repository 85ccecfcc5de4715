"""Threads on the CPU (issue 19): training and importance-sampled evaluation of the mnist5k model under each thread
policy, each in a fresh process (OpenMP reads its settings when torch loads), with achieved GFLOP/s against a
matrix-product peak measured in the same process, for `benchmarks/run.py threads`.

Policies: torch's defaults (every core, spinning OpenMP waits), `OMP_WAIT_POLICY=PASSIVE` on every core (what
vae_nb set on import before), one intra-op thread, and one intra-op thread with `map_chunks` spreading the chunks of
importance samples over the cores (what vae_nb does now for a small model: `vae_nb.cpu`). Training is the CLI's step
(channels_last, batch 64, Adam); evaluation is `VAE.log_likelihood` at B = 100, and the decode floor decodes the
same number of latents in chunks of 256 with no likelihood work. Nothing here is asserted by the tests.
"""
import json, os, subprocess, sys, time

POLICIES = {
    'defaults (spin)':      dict(env={}, threads=None, workers=1),
    'PASSIVE':              dict(env=dict(OMP_WAIT_POLICY='PASSIVE'), threads=None, workers=1),
    '1 thread':             dict(env={}, threads=1, workers=1),
    '1 thread + chunks':    dict(env={}, threads=1, workers=None),
}

CHILD = r'''
import json, os, sys, time, statistics
import torch
cfg = json.loads(sys.argv[1]); S = json.loads(sys.argv[2])
if cfg['threads']: torch.set_num_threads(cfg['threads'])
from torch.utils.flop_counter import FlopCounterMode
from vae_nb.model import VAE
from vae_nb.cpu import set_chunk_workers, map_chunks, chunk_workers
set_chunk_workers(cfg['workers'])
torch.manual_seed(0)
cl = torch.channels_last
model = VAE(in_channels=1, input_size=32, z_dim=16, encoder_features=16, decoder_features=8).to(memory_format=cl)
x = (torch.rand(S['n_train'], 1, 32, 32) * 2 - 1).contiguous(memory_format=cl)
B = 64
with FlopCounterMode(display=False) as fc:
    _, nll, kl = model(x[:B], check=False); (nll + kl).mean().backward()
train_flops = fc.get_total_flops() / B; model.zero_grad()
with torch.no_grad(), FlopCounterMode(display=False) as fc: model.decode(torch.zeros(1, 16), check=False)
decode_flops = fc.get_total_flops()
opt = torch.optim.Adam(model.parameters(), 4e-3)
batches = x.split(B)
def epoch():
    for xb in batches:
        _, nll, kl = model(xb, check=False); loss = (nll + kl).mean(); opt.zero_grad(); loss.backward(); opt.step()
def best(f, n):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
epoch()
t_train = best(epoch, S['repeat'])
xe = x[:100].contiguous(memory_format=cl); k = S['k']
with torch.no_grad():
    model.log_likelihood(xe[:10], k=4)
    t_ll = best(lambda: model.log_likelihood(xe, k=k), S['repeat'])
    chunks = [torch.randn(256, 16) for _ in range(len(xe) * k // 256)]
    t_floor = best(lambda: map_chunks(lambda z: model.decode(z, check=False), chunks), S['repeat'])
used = dict(threads=torch.get_num_threads(), workers=chunk_workers())
n_peak = 2048 if not S['smoke'] else 256
torch.set_num_threads(os.cpu_count() or 1)                      # the peak: every core
a = torch.randn(n_peak, n_peak); a @ a
t_mm = best(lambda: a @ a, 5)
print(json.dumps(dict(**used,
    train_img_s=len(x) / t_train, train_gflops=len(x) * train_flops / t_train / 1e9,
    ll_latents_s=len(xe) * k / t_ll, floor_latents_s=len(chunks) * 256 / t_floor,
    decode_gflops=len(chunks) * 256 * decode_flops / t_floor / 1e9, peak_gflops=2 * n_peak**3 / t_mm / 1e9,
    train_mflop_img=train_flops / 1e6, decode_mflop=decode_flops / 1e6)))
'''

def clean_env(extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(('OMP_', 'GOMP_', 'KMP_', 'MKL_'))}
    env.update(extra); return env

def part_threads(device, S, table):
    "Each thread policy in a fresh process, taking turns over the repeats: training img/s, evaluation latents/s, GFLOP/s."
    if device.type != 'cpu': return dict(note='CPU only')
    sizes = dict(n_train=128 if S['smoke'] else 2048, k=8 if S['smoke'] else 200, repeat=1 if S['smoke'] else 3, smoke=S['smoke'])
    rows = {}
    for rep in range(1 if S['smoke'] else 2):                  # the policies take turns, so drifts hit them alike
        for name, cfg in POLICIES.items():
            out = subprocess.run([sys.executable, '-c', CHILD, json.dumps(cfg), json.dumps(sizes)], env=clean_env(cfg['env']),
                                 capture_output=True, text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            best = rows.get(name)
            if best is None: rows[name] = r
            else: rows[name] = {k: max(v, r[k]) if isinstance(v, float) else v for k, v in best.items()}   # best of the turns
    print(f"### Thread policies (mnist5k model: {r['train_mflop_img']:.1f} MFLOP per training image, "
          f"{r['decode_mflop']:.2f} MFLOP per decoded latent; {sizes['n_train']} training images, B = 100 and k = {sizes['k']} "
          f"for evaluation; best of {1 if S['smoke'] else 2} turns, each a median of {sizes['repeat']})\n")
    print(table([dict(policy=n, **r) for n, r in rows.items()],
                [('policy', 'policy', '{}'), ('threads', 'intra-op threads', '{}'), ('workers', 'chunk workers', '{}'),
                 ('train_img_s', 'train img/s', '{:,.0f}'), ('train_gflops', 'train GFLOP/s', '{:.1f}'),
                 ('ll_latents_s', 'log_likelihood latents/s', '{:,.0f}'), ('floor_latents_s', 'decode floor latents/s', '{:,.0f}'),
                 ('decode_gflops', 'decode GFLOP/s', '{:.1f}'), ('peak_gflops', 'matmul peak GFLOP/s', '{:.0f}')]) + '\n', flush=True)
    return rows
