"""Train a digits zoo model (the ResNet or the ViT) and write its weights and JSON sidecar.

    python scripts/train_digits.py                      # -> tvmptq/zoo/weights/digits_resnet.{pt,json}
    python scripts/train_digits.py --model digits_vit   # -> tvmptq/zoo/weights/digits_vit.{pt,json}
    python scripts/train_digits.py --out-dir /tmp/x     # retrain elsewhere (the slow test does this)

Deterministic: fixed seeds, deterministic algorithms and 2 threads, so a rerun on the same
software stack reproduces the shipped weights' accuracy. Data: the protocol's stratified 70/30
split of scikit-learn digits (tvmptq.data.digits); the test split is used only for the final figure.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tvmptq.data.digits import load_digits_split
from tvmptq.zoo import digits_resnet, digits_vit
from tvmptq.zoo.digits_resnet import count_correct

THREADS = 2
# model -> (class, weights file, sidecar file, default epochs, max learning rate)
MODELS = {
    "digits_resnet": (digits_resnet.DigitsResNet, digits_resnet.WEIGHTS_FILE, digits_resnet.SIDECAR_FILE, 30, 3e-3),
    "digits_vit": (digits_vit.DigitsViT, digits_vit.WEIGHTS_FILE, digits_vit.SIDECAR_FILE, 60, 5e-3),
}


def random_roll(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by -1, 0 or +1 pixel in each direction (wrapping), drawn from `generator`."""
    n, _, height, width = images.shape
    shifts = torch.randint(-1, 2, (n, 2), generator=generator)
    # torch.roll per image, vectorised: output pixel (y, x) comes from ((y - dy) % H, (x - dx) % W).
    rows = (torch.arange(height)[None, :] - shifts[:, :1]) % height  # (n, H)
    cols = (torch.arange(width)[None, :] - shifts[:, 1:]) % width  # (n, W)
    return images[torch.arange(n)[:, None, None, None], torch.arange(images.shape[1])[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def train(epochs: int, seed: int, batch_size: int = 64, max_lr: float = 3e-3,
          model_class: type = digits_resnet.DigitsResNet) -> tuple[torch.nn.Module, dict]:
    torch.set_num_threads(THREADS)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(seed)  # batch order and augmentation

    x_train, y_train, x_test, y_test = (torch.tensor(np.array(a)) for a in load_digits_split())
    model = model_class()
    optimizer = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=1e-4)
    steps_per_epoch = (len(x_train) + batch_size - 1) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch)

    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        for first in range(0, len(x_train), batch_size):
            rows = order[first : first + batch_size]
            loss = F.cross_entropy(model(random_roll(x_train[rows], generator)), y_train[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if epoch % 10 == 0 or epoch == epochs:
            print(f"epoch {epoch:3d}  loss {loss.item():.4f}  t={time.perf_counter() - start:.1f}s", flush=True)
    train_seconds = time.perf_counter() - start

    model.eval()
    correct = count_correct(model, x_test, y_test)
    record = {
        "test_accuracy": correct / len(x_test),
        "test_correct": correct,
        "test_images": len(x_test),
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "max_lr": max_lr,
        "threads": THREADS,
        "torch_version": torch.__version__,
        "train_seconds": round(train_seconds, 2),
    }
    return model, record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="digits_resnet")
    parser.add_argument("--epochs", type=int, default=None, help="default: 30 (ResNet), 60 (ViT)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=None, help="default: tvmptq/zoo/weights")
    args = parser.parse_args()

    model_class, weights_file, sidecar_file, epochs, max_lr = MODELS[args.model]
    model, record = train(args.epochs or epochs, args.seed, max_lr=max_lr, model_class=model_class)
    record["model"] = args.model
    out_dir = args.out_dir or weights_file.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out_dir / weights_file.name)
    (out_dir / sidecar_file.name).write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"test accuracy {record['test_accuracy']:.4f} ({record['test_correct']}/{record['test_images']}), "
        f"train time {record['train_seconds']:.1f}s -> {out_dir}"
    )


if __name__ == "__main__":
    main()
