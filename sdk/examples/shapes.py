"""A small YOLO-style detector on rendered shapes, for the tests and the detection benchmark.

The data is made honestly: discs, squares and triangles drawn at random places and sizes
on noisy 128x128 backgrounds, each with its exact box and class. The detector's head is laid
out like YOLOv8's ONNX export: one output ``[N, 4 + C, anchors]``, box centre and size in
pixels (0..128) then class scores in 0..1 after a sigmoid, concatenated. That one Concat of
values in the hundreds and values below one is what a single int8 scale destroys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..._optional import need

SIZE = 128
CLASSES = ("disc", "square", "triangle")
STRIDES = (8, 16)


@dataclass(frozen=True)
class ShapeSet:
    """Images ``[N, 1, 128, 128]`` in [0, 1] and, per image, boxes ``[K, 4]`` (cx, cy, w, h in pixels) and classes."""

    images: np.ndarray
    boxes: list[np.ndarray]
    classes: list[np.ndarray]


def render(n: int, seed: int = 0, most: int = 3) -> ShapeSet:
    """``n`` images with 1 to ``most`` shapes each, 12 to 48 pixels across, never overlapping much."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5
    images = np.empty((n, 1, SIZE, SIZE), np.float32)
    all_boxes, all_classes = [], []
    for k in range(n):
        img = rng.normal(0.15, 0.05, (SIZE, SIZE)).astype(np.float32)
        boxes: list[list[float]] = []
        classes: list[int] = []
        for _ in range(rng.integers(1, most + 1)):
            for _attempt in range(20):
                s = float(rng.uniform(12, 48))
                cx, cy = (float(v) for v in rng.uniform(s / 2 + 1, SIZE - s / 2 - 1, 2))
                if all(abs(cx - b[0]) > (s + b[2]) / 2 or abs(cy - b[1]) > (s + b[3]) / 2 for b in boxes):
                    break
            else:
                continue
            cls = int(rng.integers(len(CLASSES)))
            if cls == 0:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= (s / 2) ** 2
            elif cls == 1:
                mask = (np.abs(xx - cx) <= s / 2) & (np.abs(yy - cy) <= s / 2)
            else:  # apex up: inside below both slanted edges and above the base
                top, base = cy - s / 2, cy + s / 2
                half = (yy - top) / s * (s / 2)
                mask = (yy >= top) & (yy <= base) & (np.abs(xx - cx) <= half)
            img[mask] = rng.uniform(0.6, 1.0)
            boxes.append([cx, cy, s, s])
            classes.append(cls)
        images[k, 0] = np.clip(img, 0, 1)
        all_boxes.append(np.asarray(boxes, np.float32).reshape(-1, 4))
        all_classes.append(np.asarray(classes, np.int64))
    return ShapeSet(images, all_boxes, all_classes)


def detector(width: int = 16) -> Any:
    """A two-scale anchor-free detector; ``forward(image) -> [N, 4 + 3, 320]`` like YOLOv8's export."""
    torch = need("torch", extra="sdk", purpose="to build the example detector")
    nn = torch.nn
    w = width

    def block(cin: int, cout: int) -> Any:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.SiLU(),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.SiLU())

    class ShapesDetector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            # A stride-4 patch stem keeps training on a CPU in seconds; then stride 8 and 16.
            self.stem = nn.Sequential(nn.Conv2d(1, w, 4, stride=4), nn.BatchNorm2d(w), nn.SiLU(),
                                      block(w, 2 * w), nn.Conv2d(2 * w, 4 * w, 3, padding=1),
                                      nn.BatchNorm2d(4 * w), nn.SiLU())  # stride 8
            self.down = block(4 * w, 4 * w)  # stride 16
            self.box8, self.cls8 = nn.Conv2d(4 * w, 4, 1), nn.Conv2d(4 * w, len(CLASSES), 1)
            self.box16, self.cls16 = nn.Conv2d(4 * w, 4, 1), nn.Conv2d(4 * w, len(CLASSES), 1)
            for stride in STRIDES:
                n = SIZE // stride
                gy, gx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
                grid = torch.stack([gx, gy]).reshape(1, 2, -1).float()
                self.register_buffer(f"grid{stride}", grid)

        def decode(self, box: Any, cls: Any, stride: int) -> tuple[Any, Any]:
            n = box.shape[0]
            box, cls = box.reshape(n, 4, -1), cls.reshape(n, len(CLASSES), -1)
            grid = getattr(self, f"grid{stride}")
            xy = (grid + 0.5 + 2 * torch.tanh(box[:, :2])) * stride
            wh = torch.sigmoid(box[:, 2:]) * SIZE
            return torch.cat([xy, wh], 1), torch.sigmoid(cls)

        def forward(self, image: Any) -> Any:
            f8 = self.stem(image)
            f16 = self.down(f8)
            b8, c8 = self.decode(self.box8(f8), self.cls8(f8), 8)
            b16, c16 = self.decode(self.box16(f16), self.cls16(f16), 16)
            boxes = torch.cat([b8, b16], 2)
            scores = torch.cat([c8, c16], 2)
            return torch.cat([boxes, scores], 1)  # [N, 4 + C, anchors]: YOLOv8's layout

    return ShapesDetector()


def targets(data: ShapeSet) -> tuple[np.ndarray, np.ndarray]:
    """Per anchor: class targets ``[N, C, A]`` and box targets ``[N, 4, A]`` (NaN where no object).

    An object belongs to the scale its size suits (under 24 px: stride 8) and to the cells
    around its centre that lie inside it.
    """
    anchors = sum((SIZE // s) ** 2 for s in STRIDES)
    cls = np.zeros((len(data.images), len(CLASSES), anchors), np.float32)
    box = np.full((len(data.images), 4, anchors), np.nan, np.float32)
    for k, (boxes, classes) in enumerate(zip(data.boxes, data.classes)):
        for (cx, cy, w, h), c in zip(boxes, classes):
            stride = 8 if w < 24 else 16
            offset = 0 if stride == 8 else (SIZE // 8) ** 2
            n = SIZE // stride
            gx, gy = int(cx // stride), int(cy // stride)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    x, y = gx + dx, gy + dy
                    centre_x, centre_y = (x + 0.5) * stride, (y + 0.5) * stride
                    if not (0 <= x < n and 0 <= y < n):
                        continue
                    if (dx or dy) and (abs(centre_x - cx) > w / 4 or abs(centre_y - cy) > h / 4):
                        continue
                    a = offset + y * n + x
                    cls[k, c, a] = 1.0
                    box[k, :, a] = (cx, cy, w, h)
    return cls, box


def train_detector(data: ShapeSet, *, epochs: int = 12, lr: float = 3e-3, seed: int = 0) -> Any:
    """Train :func:`detector` on ``data`` (CPU, about a minute for 1,200 images)."""
    torch = need("torch", extra="sdk", purpose="to train the example detector")
    torch.manual_seed(seed)
    model = detector()
    cls_t, box_t = (torch.from_numpy(a) for a in targets(data))
    x = torch.from_numpy(data.images)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * -(-len(x) // 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=gen).split(32):
            out = model(x[idx])
            boxes, scores = out[:, :4], out[:, 4:]
            # Summed over anchors and divided by the objects, as YOLOv8 does: the few positive
            # anchors are not drowned by the hundreds of empty ones.
            target = cls_t[idx]
            loss = torch.nn.functional.binary_cross_entropy(scores.clamp(1e-6, 1 - 1e-6), target,
                                                            reduction="sum") / target.sum().clamp(min=1)
            mask = ~torch.isnan(box_t[idx])
            if mask.any():
                loss = loss + torch.nn.functional.smooth_l1_loss(boxes[mask] / 16, box_t[idx][mask] / 16)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()
