"Training throughput, FLOPs and evaluation at scale, for `benchmarks/run.py`."
import os, subprocess, sys, tempfile, time
import torch
from torch.utils.flop_counter import FlopCounterMode
from vae_nb.model import VAE
from vae_nb.data import load_mnist5k, to_model_range, InMemoryLoader
from vae_nb.train import fit, save_checkpoint

def train_data(device):
    x, y, _, _ = load_mnist5k()
    return to_model_range(x).to(device), y.to(device)

def fresh_model(device):
    "A freshly initialised model with `vae_nb_train`'s default configuration."
    from run import CONFIG
    torch.manual_seed(0)
    return VAE(**CONFIG).to(device)

def bare_loop(model, x, batch_size=64, sync=None):
    "Images/s of the ceiling: forward, backward and Adam step over in-memory batches, nothing else."
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    def epoch():
        for xb in x.split(batch_size):
            _, nll, kl = model._forward(xb)
            loss = (nll + kl).mean()
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    epoch()                                            # warm-up
    if sync: sync()
    t = time.perf_counter(); epoch()
    if sync: sync()
    return len(x) / (time.perf_counter() - t)

def fit_speed(model, x, y, device, batch_size=64, epochs=2):
    "Images/s of `fit` on an in-memory loader (the second epoch: the first warms up)."
    dl = InMemoryLoader(x, y, batch_size=batch_size, shuffle=True)
    hist = fit(model, dl, epochs=epochs, device=device, progress=False)
    return len(x) / hist[-1]['seconds']

def flops_per_image(model, device, batch_size=64):
    "FLOPs of one training step (forward + backward) and of one forward pass, per image."
    x = torch.rand(batch_size, 1, 32, 32, device=device) * 2 - 1
    with FlopCounterMode(display=False) as fc:
        _, nll, kl = model._forward(x); (nll + kl).mean().backward()
    train = fc.get_total_flops() / batch_size
    with FlopCounterMode(display=False) as fc, torch.no_grad(): model._forward(x)
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

def eval_at_scale(device, k=1000):
    "Wall time of `vae_nb_eval CKPT --k 1000` over the whole mnist5k test split (a 1-epoch checkpoint)."
    with tempfile.TemporaryDirectory() as d:
        model = fresh_model(device); x, y = train_data(device)
        fit(model, InMemoryLoader(x, y, batch_size=64, shuffle=True), epochs=1, device=device, progress=False)
        ckpt = os.path.join(d, 'model.pt'); save_checkpoint(ckpt, model.cpu(), None, 1, [], dataset='mnist5k')
        t = time.perf_counter()
        out = subprocess.run(['vae_nb_eval', ckpt, '--k', str(k), '--device', device.type], capture_output=True, text=True)
        wall = time.perf_counter() - t
        if out.returncode: raise RuntimeError(out.stderr.strip().splitlines()[-1])
        return dict(k=k, wall_s=wall, result=out.stdout.strip().splitlines()[-1])

def run(parts, device, table):
    sync = torch.cuda.synchronize if device.type == 'cuda' else None
    res = {}
    if 'train' in parts:
        x, y = train_data(device)
        ceiling = bare_loop(fresh_model(device), x, sync=sync)
        speed = fit_speed(fresh_model(device), x, y, device)
        train_flops, fwd_flops = flops_per_image(fresh_model(device), device)
        peak = matmul_peak(device, sync=sync)
        r = res['train'] = dict(bare_img_s=ceiling, fit_img_s=speed, fit_over_bare=speed / ceiling,
                                train_mflop_per_img=train_flops / 1e6, fwd_mflop_per_img=fwd_flops / 1e6,
                                achieved_gflops=ceiling * train_flops / 1e9, matmul_gflops=peak / 1e9)
        r['fraction_of_peak'] = r['achieved_gflops'] / r['matmul_gflops']
        print("### Training, batch 64, mnist5k in memory (4,000 images)\n")
        print(table([r], [('bare_img_s', 'bare loop (img/s)', '{:.0f}'), ('fit_img_s', 'fit (img/s)', '{:.0f}'),
                          ('fit_over_bare', 'fit / bare', '{:.0%}'), ('train_mflop_per_img', 'train MFLOP/img', '{:.1f}'),
                          ('achieved_gflops', 'achieved GFLOP/s', '{:.1f}'), ('matmul_gflops', 'matmul GFLOP/s', '{:.1f}'),
                          ('fraction_of_peak', 'of matmul peak', '{:.0%}')]) + '\n')
    if 'eval' in parts:
        r = res['eval'] = eval_at_scale(device)
        print(f"### vae_nb_eval --k {r['k']} over the 1,000 mnist5k test images\n\nwall time {r['wall_s']:.0f} s; output: `{r['result']}`\n")
    return res
