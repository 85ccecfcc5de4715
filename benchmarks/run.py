"""vae_nb benchmarks: importance-sampled log-likelihood, training throughput, evaluation at scale.

Run `python benchmarks/run.py` (all) or `python benchmarks/run.py ll train eval` (some). Prints markdown tables.
Times are medians of several repeats after a warm-up; ratios measured side by side in one run carry over
between machines, absolute times do not. Not part of the tests: nothing here asserts a speed.
"""
import argparse, json, math, os, platform, resource, statistics, subprocess, sys, time
import torch
from vae_nb.model import VAE

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

def machine(device):
    "One line describing where the numbers come from."
    s = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if device.type == 'cuda': s += f", {torch.cuda.get_device_name(device)}"
    return s

CONFIG = dict(in_channels=1, input_size=32, z_dim=16, encoder_features=16, decoder_features=8)  # vae_nb_train's defaults

def mnist_model(device, dtype=torch.float32):
    "The model `vae_nb_train` builds for mnist5k, in eval mode."
    torch.manual_seed(0)
    return VAE(**CONFIG).to(device, dtype).eval()

# ---- importance-sampled log-likelihood ----
def decode_floor(model, n, batches=(128, 256, 512, 1024), repeat=3, sync=None):
    "Best time to decode `n` latents under no_grad, over several decoder batch sizes: what any K-sample estimator must pay."
    z = torch.randn(max(batches), model.z_dim, device=model._param().device)
    def run(batch):
        with torch.no_grad():
            for s in range(0, n, batch): model._decode(z[:min(batch, n - s)])
    return min(timeit(lambda: run(b), repeat, sync=sync) for b in batches)

def seed_loop(model, x, K):
    "The seed's way: a Python loop over the K samples, one decode of the batch per sample."
    from vae_nb.distributions import DiagonalGaussianDistribution as DG
    def f():
        with torch.no_grad():
            q = model._encode(x)
            logw = []
            for _ in range(K):
                z = q.sample()
                lw = -DG(model._decode(z)).nll(x) - DG(torch.zeros_like(z)).nll(z) + DG(q.mean, q.logvar).nll(z)
                logw.append(lw)
            return torch.logsumexp(torch.stack(logw), 0) - math.log(K)
    return f

def bench_ll(device, K=1000, batches=(1, 8, 64), repeat=3):
    model = mnist_model(device)
    sync = torch.cuda.synchronize if device.type == 'cuda' else None
    rows = []
    for B in batches:
        x = torch.rand(B, 1, 32, 32, device=device) * 2 - 1
        t_floor = decode_floor(model, K * B, repeat=repeat, sync=sync)
        t_ll = timeit(lambda: model.log_likelihood(x, K=K), repeat, sync=sync)
        t_seed = timeit(seed_loop(model, x, K), max(1, repeat - 2), sync=sync)
        rows.append(dict(B=B, K=K, floor_s=t_floor, ll_s=t_ll, seed_s=t_seed,
                         ll_over_floor=t_ll / t_floor, speedup_over_seed=t_seed / t_ll))
    return rows

def peak_memory(device, K, B=8, chunk_size=None):
    "Peak memory (MiB) of one `log_likelihood(x, K)` call: CUDA allocator peak, or the CPU process's resident-set growth (sampled every 2 ms)."
    if device.type == 'cuda':
        model = mnist_model(device); x = torch.rand(B, 1, 32, 32, device=device) * 2 - 1
        model.log_likelihood(x, K=2)
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        model.log_likelihood(x, K=K, chunk_size=chunk_size)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    code = (f"import os,threading,time,torch; from vae_nb.model import VAE; torch.manual_seed(0); m=VAE(**{CONFIG}).eval(); "
            f"x=torch.rand({B},1,32,32)*2-1; m.log_likelihood(x,K=2); page=os.sysconf('SC_PAGE_SIZE'); "
            f"rss=lambda: int(open('/proc/self/statm').read().split()[1])*page; base=rss(); peak=[base]; done=[]\n"
            f"def watch():\n while not done: peak[0]=max(peak[0],rss()); time.sleep(0.002)\n"
            f"t=threading.Thread(target=watch); t.start(); m.log_likelihood(x,K={K},chunk_size={chunk_size}); done.append(1); t.join(); "
            f"print((peak[0]-base)/2**20)")
    return float(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()[-1])

def bench_memory(device, Ks=(100, 10_000), B=8):
    return [dict(B=B, K=K, peak_mib=peak_memory(device, K, B)) for K in Ks]

# ---- tables ----
def table(rows, cols):
    "A markdown table of `rows` (dicts) with `cols` (key, header, format)."
    out = ['| ' + ' | '.join(h for _, h, _ in cols) + ' |', '|' + '---|' * len(cols)]
    for r in rows: out.append('| ' + ' | '.join(fmt.format(r[k]) for k, _, fmt in cols) + ' |')
    return '\n'.join(out)

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('parts', nargs='*', default=['ll', 'chunks', 'memory', 'train', 'eval'], help="which benchmarks: ll chunks memory train eval")
    p.add_argument('--device', default='cpu', help="cpu or cuda")
    p.add_argument('--json', help="also write the raw results to this JSON file")
    a = p.parse_args()
    device = torch.device(a.device)
    print(f"machine: {machine(device)}\ncommand: python benchmarks/run.py {' '.join(sys.argv[1:])}\n")
    results = {}
    if 'll' in a.parts:
        rows = results['ll'] = bench_ll(device)
        print("### log_likelihood, K = 1000 (median seconds)\n")
        print(table(rows, [('B', 'batch', '{}'), ('floor_s', 'decode floor (s)', '{:.3f}'), ('ll_s', 'log_likelihood (s)', '{:.3f}'),
                           ('ll_over_floor', 'over floor', '{:.2f}×'), ('seed_s', 'seed loop (s)', '{:.3f}'),
                           ('speedup_over_seed', 'speed-up over seed', '{:.1f}×')]) + '\n')
    if 'chunks' in a.parts:
        rows = results['chunks'] = bench_chunks(device)
        print("### log_likelihood, K = 1000, batch 8: latents per decoder call and memory format (median seconds)\n")
        print(table(rows, [('format', 'memory format', '{}'), ('latents_per_call', 'latents per decoder call', '{}'), ('ll_s', 'seconds', '{:.3f}')]) + '\n')
    if 'memory' in a.parts:
        rows = results['memory'] = bench_memory(device)
        print("### log_likelihood peak memory, batch 8\n")
        print(table(rows, [('K', 'K', '{}'), ('peak_mib', 'peak memory (MiB)', '{:.1f}')]) + '\n')
    if 'train' in a.parts or 'eval' in a.parts:
        try: import bench_train
        except ImportError: bench_train = None
        if bench_train: results.update(bench_train.run(a.parts, device, table))
    if a.json:
        with open(a.json, 'w') as f: json.dump(results, f, indent=1)

if __name__ == '__main__': main()
