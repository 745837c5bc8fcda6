"""torchvision's preprocessing on the same JPEGs as `inception-preprocess-bench`
(the PyTorch side of the preprocess benchmark), one thread per worker.

Training: PIL decode, RandomResizedCrop(size) + RandomHorizontalFlip +
ColorJitter(brightness=32/255, contrast=0.5, saturation=0.5, hue=0.2) (the
original's distortion ranges) + to uint8 tensor. `--eval`: PIL decode,
CenterCrop to 0.875 of each side + Resize(size) bilinear + to uint8 tensor.
`--workers N` runs N processes, as N preprocess workers would."""
import argparse
import glob
import io
import multiprocessing as mp
import os
import time

import torch
from PIL import Image
from torchvision.transforms import v2

p = argparse.ArgumentParser()
p.add_argument("--images", default="var/bench-images-v2")
p.add_argument("--image-size", type=int, default=299)
p.add_argument("--passes", type=int, default=5)
p.add_argument("--workers", type=int, default=1)
p.add_argument("--eval", action="store_true")
a = p.parse_args()


def transform():
    if a.eval:
        def centre(img):
            w, h = img.size
            return v2.functional.center_crop(img, [int(h * 0.875), int(w * 0.875)])
        return v2.Compose([v2.Lambda(centre), v2.Resize((a.image_size, a.image_size), antialias=False), v2.PILToTensor()])
    return v2.Compose([
        v2.RandomResizedCrop(a.image_size, scale=(0.05, 1.0), ratio=(0.75, 1.33), antialias=False),
        v2.RandomHorizontalFlip(),
        v2.ColorJitter(brightness=32 / 255, contrast=0.5, saturation=0.5, hue=0.2),
        v2.PILToTensor(),
    ])


def work(jpegs):
    torch.set_num_threads(1)
    t = transform()
    done = 0
    for _ in range(a.passes):
        for data in jpegs:
            img = Image.open(io.BytesIO(data)).convert("RGB")
            out = t(img)
            done += 1
    return done


if __name__ == "__main__":
    files = sorted(glob.glob(os.path.join(a.images, "*.jpg")))
    if not files:
        raise SystemExit(f"no JPEGs in {a.images}: run inception-preprocess-bench first")
    jpegs = [open(f, "rb").read() for f in files]
    work(jpegs[:4])  # warm-up
    start = time.perf_counter()
    if a.workers == 1:
        done = work(jpegs)
    else:
        with mp.Pool(a.workers) as pool:
            done = sum(pool.map(work, [jpegs] * a.workers))
    secs = time.perf_counter() - start
    kind = "eval" if a.eval else "train"
    print(f"torchvision {kind:<5} {a.image_size} px, {a.workers} worker(s): {done / secs:.1f} examples/s "
          f"({done / secs / a.workers:.1f} per worker; {len(jpegs)} JPEGs)")
