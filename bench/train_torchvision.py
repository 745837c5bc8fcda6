"""Train-step throughput of torchvision's inception_v3 on random data, for
comparison with inception-bench-train (same batch, size, threads): forward
with the auxiliary head, label-smoothed cross-entropy + 0.4 aux, backward,
RMSprop with weight decay 4e-5."""
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
p.add_argument("--no-aux", action="store_true", help="without the auxiliary head (torchvision's needs 299 px)")
a = p.parse_args()
if a.threads > 0:
    torch.set_num_threads(a.threads)
model = torchvision.models.inception_v3(weights=None, aux_logits=not a.no_aux, init_weights=False, num_classes=a.labels + 1)
model.train()
opt = torch.optim.RMSprop(model.parameters(), lr=0.01, alpha=0.9, eps=1.0, momentum=0.9, weight_decay=4e-5)
images = torch.randint(0, 256, (a.batch_size, a.image_size, a.image_size, 3), dtype=torch.uint8)
targets = torch.randint(1, a.labels + 1, (a.batch_size,))
ce = torch.nn.CrossEntropyLoss(label_smoothing=0.1)


def step():
    x = images.permute(0, 3, 1, 2).float() * (2 / 255) - 1
    out = model(x)
    if a.no_aux:
        loss = ce(out, targets)
    else:
        loss = ce(out.logits, targets) + 0.4 * ce(out.aux_logits, targets)
    opt.zero_grad()
    loss.backward()
    opt.step()


for _ in range(a.warmup):
    step()
start = time.perf_counter()
for _ in range(a.steps):
    step()
secs = (time.perf_counter() - start) / a.steps
print(f"torch  size={a.image_size} batch={a.batch_size} aux={not a.no_aux} threads={torch.get_num_threads()}: "
      f"{a.batch_size / secs:.2f} img/s ({secs:.3f} s/step)")
