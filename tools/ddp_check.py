"""The script that the multi-process tests of nbs/03_train.ipynb start with torchrun, 2 processes on the CPU (gloo):

    python -m torch.distributed.run --standalone --nproc_per_node 2 tools/ddp_check.py MODE OUT

It is an ordinary training script: the loaders and `fit` find torchrun's environment and do the rest. MODE 'train'
runs, in one process group, on the first 512 mnist5k training digits (global batch 64, 2 epochs) validated on 500
test digits:
  a  2 epochs with a checkpoint, from loaders that give each process its shard (`InMemoryLoader` under torchrun),
     counting the calls of `on_epoch_end` on each process;
  b  1 epoch, then a resume to 2 epochs (same checkpoint);
  c  2 epochs without sampling noise (the posterior's mean instead of a sample), then its ELBO on all 1000 test digits,
     scored by both processes (`evaluate` adds up their parts), from a sharded loader and from whole batches of 99;
  d  as a, but from loaders of whole batches (`world_size=1`), of which `fit` gives each process its part;
  e  1 epoch from a DataLoader with a DistributedSampler;
  f  rank 1's part of the second batch holds a NaN: both processes stop there, with the same error;
  h  2 epochs with the training kit on (EMA, a learning-rate warm-up, gradient clipping, a test set);
  i  the same, 1 epoch, then a resume to 2;
and writes what it measured to OUT/results.json (rank 0); last,
  g  rank 1 fails in epoch 2 (a RuntimeError), which ends the launch with an error.
MODE 'vanish': rank 1 exits quietly (code 0) during epoch 1. MODE 'hang': rank 1 stops answering during epoch 1; the
other's next exchange times out after 5 s."""
import json, os, sys, time
from pathlib import Path
from unittest import mock
import torch, torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from vae_nb.data import load_mnist5k, to_model_range, InMemoryLoader, MNIST5K_CONFIG
from vae_nb.distributions import DiagonalGaussianDistribution
from vae_nb.model import VAE
from vae_nb.dist import distributed_info, finish_distributed
from vae_nb.train import fit, evaluate

N_TRAIN, N_VALID, BATCH, EPOCHS, LR = 512, 500, 64, 2, MNIST5K_CONFIG['lr']

def data(**kw) -> tuple:
    "Loaders of 512 training digits (shuffled) and 500 test digits; `kw`: `InMemoryLoader`'s, e.g. rank=0, world_size=1 for whole batches."
    x, y, xt, yt = load_mnist5k()
    return (InMemoryLoader(x[:N_TRAIN], y[:N_TRAIN], BATCH, shuffle=True, seed=0, tfm=to_model_range, **kw),
            InMemoryLoader(xt[:N_VALID], yt[:N_VALID], 100, tfm=to_model_range, pad=False, **kw))

def model() -> VAE:
    torch.manual_seed(0)
    return VAE(**MNIST5K_CONFIG['model'])

_sample = DiagonalGaussianDistribution.sample
def noiseless():
    "Within it, q(z|x) 'samples' its mean: the objective is deterministic, so 1 and 2 processes can be compared to float precision."
    return mock.patch.object(DiagonalGaussianDistribution, 'sample',
                             lambda self, noise=None, generator=None: self.mean if noise is None else _sample(self, noise, generator))

class Failing:
    "`dl`, except that at `epoch` (from 0), step `step` (from 0), this process raises, exits quietly, stops answering, or serves a NaN."
    def __init__(self, dl, epoch:int, how:str, step:int=3): self.dl, self.at, self.how, self.epoch = dl, (epoch, step), how, 0
    def __len__(self): return len(self.dl)
    def set_epoch(self, epoch): self.dl.set_epoch(epoch); self.epoch = epoch
    def __iter__(self):
        for i, b in enumerate(self.dl):
            if (self.epoch, i) == self.at:
                if self.how == 'raise': raise RuntimeError(f"simulated failure on rank {dist.get_rank()}")
                if self.how == 'exit': os._exit(0)
                if self.how == 'nan': b = (b[0].clone().index_fill_(0, torch.tensor([0]), float('nan')), b[1])
                else: time.sleep(60)
            yield b

def run(out:Path, m:VAE=None, dls:tuple=None, epochs:int=EPOCHS, **kw) -> list:
    "`fit` of `m` (default: a fresh `model()`) on `dls` (default: `data()`) on the CPU, quietly, with checkpoint `out/ckpt.pt`."
    return fit(m or model(), *(dls or data()), epochs=epochs, lr=LR, device='cpu', progress=False, checkpoint=out/'ckpt.pt', **kw)

def gather(v) -> list:
    "Every process's `v`, in rank order."
    vs = [None] * dist.get_world_size(); dist.all_gather_object(vs, v)
    return vs

@record
def main(mode:str, out:Path):
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    rank, W, _ = distributed_info()
    if mode in ('vanish', 'hang'):
        train, valid = data()
        if rank == 1: train = Failing(train, 0, 'exit' if mode == 'vanish' else 'sleep')
        run(out/mode, dls=(train, valid), timeout_s=5)
        return
    res = {}
    calls = []
    m = model(); res['history'] = run(out/'a', m=m, on_epoch_end=lambda m, h: calls.append(len(h)))   # a
    res['on_epoch_end_calls'] = gather(len(calls))
    t_a = time.perf_counter() - t0
    res['param_sums'] = gather(sum(p.detach().double().abs().sum() for p in m.parameters()).item())   # the same weights?
    run(out/'b', epochs=1); res['resumed_history'] = run(out/'b', resume=True)   # b
    x, y, xt, yt = load_mnist5k()
    with noiseless():                                                  # c
        m = model(); run(out/'c', m=m)
        res['quiet_test'] = [evaluate(m, InMemoryLoader(xt, yt, 100, tfm=to_model_range, pad=False)),
                             evaluate(m, InMemoryLoader(xt, yt, 99, tfm=to_model_range, rank=0, world_size=1))]
    res['whole_history'] = run(out/'d', dls=data(rank=0, world_size=1))     # d
    ds = torch.utils.data.TensorDataset(to_model_range(x[:N_TRAIN]), y[:N_TRAIN])  # e
    own = torch.utils.data.DataLoader(ds, BATCH // W, sampler=torch.utils.data.DistributedSampler(ds, shuffle=True, seed=0))
    res['sampler_history'] = run(out/'e', dls=(own, None), epochs=1)
    train, valid = data()                                              # f
    if rank == 1: train = Failing(train, 0, 'nan', step=1)
    try: run(out/'f', dls=(train, valid))
    except FloatingPointError as e: res['nan_errors'] = gather(str(e))
    kit = dict(ema=0.9, warmup_epochs=1, clip_grad_norm=100.0)           # h, i
    m = model(); res['kit_history'] = run(out/'h', m=m, test_dl=data()[1], **kit)
    res['kit_param_sums'] = gather(sum(p.detach().double().abs().sum() for p in m.parameters()).item())
    run(out/'i', epochs=1, test_dl=data()[1], **kit); res['kit_resumed'] = run(out/'i', test_dl=data()[1], resume=True, **kit)
    res.update(world_size=W, t_first_fit=t_a, t_total=time.perf_counter() - t0)
    if rank == 0: (out/'results.json').write_text(json.dumps(res))
    train, valid = data()                                              # g: ends the launch
    if rank == 1: train = Failing(train, 1, 'raise')
    run(out/'g', dls=(train, valid))

if __name__ == '__main__':
    main(sys.argv[1], Path(sys.argv[2]))
    finish_distributed()
