"""Evaluation throughput of torchvision's inception_v3 (eval mode, no
gradients) on random data, for comparison with `inception-bench --eval`."""
import argparse
import time

import torch
import torchvision

p = argparse.ArgumentParser()
p.add_argument("--image-size", type=int, default=299)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--labels", type=int, default=1000)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--threads", type=int, default=0)
a = p.parse_args()
if a.threads > 0:
    torch.set_num_threads(a.threads)
model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False, num_classes=a.labels + 1).eval()
images = torch.randint(0, 256, (a.batch_size, a.image_size, a.image_size, 3), dtype=torch.uint8)


def run():
    with torch.no_grad():
        return model(images.permute(0, 3, 1, 2).float() * (2 / 255) - 1)[0, 0].item()


for _ in range(a.warmup):
    run()
start = time.perf_counter()
for _ in range(a.steps):
    run()
secs = (time.perf_counter() - start) / a.steps
print(f"torch  eval size={a.image_size} batch={a.batch_size} threads={torch.get_num_threads()}: "
      f"{a.batch_size / secs:.2f} img/s ({secs:.3f} s/batch)")
