__version__ = "0.1.0"

import os as _os, sys as _sys
# Ask torch's OpenMP runtime (libgomp) to sleep, not spin, while its threads wait for each other. With the default
# spin, training beside another busy PyTorch process stalls at random (7 of 22 runs over 6.8x slower on 2 cores;
# benchmarks/bench_busy.py, BENCHMARKS.md). libgomp reads the variable once, when `import torch` loads it, so this
# works when vae_nb is imported before torch (the vae_nb_* commands are; so is every notebook's first cell), and a
# value the user set wins.
if 'torch' not in _sys.modules: _os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
