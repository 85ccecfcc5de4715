"""Where `fit`'s training step goes, on the CPU, for the mnist5k model as `vae_nb_train` sets it up (one intra-op thread,
the batch split over the cores): per step, the split forward and backward alone; with Adam; with `_update` (the
gradient norm too); and the whole `train_epoch` (loader, finiteness checks, bookkeeping). The four take turns, 5 times;
medians in ms per step. `python benchmarks/bench_step.py`. Nothing here is asserted by the tests.
"""
import torch, time, statistics
import vae_nb
from vae_nb.model import VAE
from vae_nb.data import MNIST5K_CONFIG, load_mnist5k, to_model_range, InMemoryLoader
from vae_nb.train import _split_step, train_epoch, RunState, prepare_model, _update
from vae_nb.objectives import ELBO
from vae_nb.cpu import keep_freed_memory
keep_freed_memory()
x, y, _, _ = load_mnist5k(); x = to_model_range(x[:4000])
m = prepare_model(VAE(**MNIST5K_CONFIG['model']), 'cpu'); print('threads', torch.get_num_threads())
ps = list(m.parameters()); obj = ELBO()
opt = torch.optim.Adam(ps, lr=1e-3, fused=True)
dl = InMemoryLoader(x, y, batch_size=64, shuffle=True)
batches = [b.contiguous(memory_format=torch.channels_last) for b, _ in dl][:62]
run = RunState()
def A():
    for xb in batches: _split_step(m, obj, xb, 1, 2, 'fp32', ps, torch.tensor(1 / 64))
def B():
    for xb in batches:
        opt.zero_grad(set_to_none=True); _split_step(m, obj, xb, 1, 2, 'fp32', ps, torch.tensor(1 / 64)); opt.step()
def C():
    for i, xb in enumerate(batches, 1):
        opt.zero_grad(set_to_none=True); _split_step(m, obj, xb, 1, 2, 'fp32', ps, torch.tensor(1 / 64)); _update(m, opt, ps, run, 1, i)
def D(): train_epoch(m, dl, opt, 1, obj, run)
fns = dict(A_step=A, B_step_adam=B, C_step_update=C, D_train_epoch=D)
for f in fns.values(): f()
res = {k: [] for k in fns}
for r in range(5):
    for k, f in fns.items():
        t = time.perf_counter(); f(); res[k].append((time.perf_counter() - t) / (63 if k.startswith('D') else 62) * 1e3)
for k, v in res.items(): print(k, 'ms/step median', round(statistics.median(v), 2), sorted(round(a, 2) for a in v))
