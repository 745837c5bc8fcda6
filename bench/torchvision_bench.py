"""torchvision's inception_v3 on random data, the PyTorch side of our
benchmarks (same batch, image size and threads as `inception-bench`).

Training (default): forward with the auxiliary head, label-smoothed
cross-entropy + 0.4 aux, backward, RMSprop with weight decay 4e-5.
`--eval`: eval-mode forward without gradients.

Under torchrun (WORLD_SIZE > 1): PyTorch's own data-parallel training,
DistributedDataParallel over Gloo (CPU) or NCCL (CUDA), each rank a
1/WORLD_SIZE share of `--batch-size` (the global batch); rank 0 prints the
global img/s. scripts/bench-distributed.sh runs it beside ours."""
import argparse
import os
import time

import torch
import torchvision

p = argparse.ArgumentParser()
p.add_argument("--eval", action="store_true", help="time evaluation instead of training")
p.add_argument("--image-size", type=int, default=299)
p.add_argument("--batch-size", type=int, default=32)
p.add_argument("--labels", type=int, default=1000)
p.add_argument("--warmup", type=int, default=2)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--threads", type=int, default=0)
p.add_argument("--no-aux", action="store_true", help="without the auxiliary head (torchvision's needs 299 px)")
p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
p.add_argument("--cudnn-benchmark", action="store_true", help="torch.backends.cudnn.benchmark (as torchvision's reference script)")
p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="torch.autocast's dtype (fp32: none)")
p.add_argument("--channels-last", action="store_true", help="model and input in torch.channels_last")
a = p.parse_args()
world = int(os.environ.get("WORLD_SIZE", "1"))
rank = int(os.environ.get("RANK", "0"))
if world > 1:
    import torch.distributed as dist
    dist.init_process_group("nccl" if a.device.startswith("cuda") else "gloo")
    if a.batch_size % world:
        p.error(f"--batch-size {a.batch_size} is not a multiple of WORLD_SIZE {world}")
    if a.device.startswith("cuda"):
        a.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
global_batch = a.batch_size
a.batch_size //= world
device = torch.device(a.device)
torch.backends.cudnn.benchmark = a.cudnn_benchmark
if a.threads > 0:
    torch.set_num_threads(a.threads)
aux = not a.no_aux
model = torchvision.models.inception_v3(weights=None, aux_logits=aux, init_weights=False, num_classes=a.labels + 1).to(device)
memory_format = torch.channels_last if a.channels_last else torch.contiguous_format
model = model.to(memory_format=memory_format)
if world > 1 and not a.eval:
    model = torch.nn.parallel.DistributedDataParallel(model)
low = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(a.precision)
scaler = torch.amp.GradScaler(device.type) if a.precision == "fp16" else None


def autocast():
    return torch.autocast(device.type, dtype=low, enabled=low is not None)
# The batch starts on the host each step, as ours does (u8 images from the queue).
images = torch.randint(0, 256, (a.batch_size, a.image_size, a.image_size, 3), dtype=torch.uint8)
targets = torch.randint(1, a.labels + 1, (a.batch_size,)).to(device)


def scaled():
    x = images.to(device).permute(0, 3, 1, 2).float() * (2 / 255) - 1
    return x.contiguous(memory_format=memory_format)


if a.eval:
    model.eval()

    def step():
        with torch.no_grad(), autocast():
            model(scaled())[0, 0].item()
else:
    model.train()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.01, alpha=0.9, eps=1.0, momentum=0.9, weight_decay=4e-5)
    ce = torch.nn.CrossEntropyLoss(label_smoothing=0.1)

    def step():
        with autocast():
            out = model(scaled())
        logits = (out.logits if aux else out).float()
        loss = ce(logits, targets) + 0.4 * ce(out.aux_logits.float(), targets) if aux else ce(logits, targets)
        opt.zero_grad()
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        loss.item()  # waits for the device, as ours reads the loss every step


for _ in range(a.warmup):
    step()
start = time.perf_counter()
for _ in range(a.steps):
    step()
secs = (time.perf_counter() - start) / a.steps
if world > 1:
    dist.destroy_process_group()
    if rank != 0:
        raise SystemExit(0)
mode = "eval" if a.eval else f"train aux={aux}"
on = "" if device.type == "cpu" else f" device={device} cudnn_benchmark={a.cudnn_benchmark}"
layout = " channels_last" if a.channels_last else ""
ranks = f" ranks={world} (DDP)" if world > 1 else ""
print(f"torch  {mode} size={a.image_size} batch={global_batch}{ranks} threads={torch.get_num_threads()} precision={a.precision}{layout}{on}: "
      f"{global_batch / secs:.2f} img/s ({secs:.3f} s/step)")
