"""Export VGG16 at CIFAR-10 shape (torchvision's 13 convolutions and 5 max pools, a 512-512-10
classifier) with PyTorch's default initialisation, as a user would: model.eval(),
torch.onnx.export with a dynamic batch axis. Also writes ROWS N(0,1) images and torch's float64
predictions for them, for scripts/vgg16_batch64.sh.

    python scripts/export_vgg16_cifar.py OUT_DIR [ROWS] [SEED]
"""
import sys

import numpy as np
import torch
from torch import nn

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG16Cifar(nn.Module):
    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for v in CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
            nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(),
            nn.Linear(512, 10),
        )

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


def main():
    out = sys.argv[1]
    rows = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    torch.manual_seed(seed)
    model = VGG16Cifar().eval()
    x = torch.randn(rows, 3, 32, 32).clamp(-15, 15)
    torch.onnx.export(model, x[:1], f"{out}/vgg16_cifar.onnx", input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    with torch.no_grad():
        logits = model.double()(x.double()).numpy()
    np.save(f"{out}/x.npy", x.numpy().astype(np.float32))
    np.save(f"{out}/torch_logits.npy", logits)
    np.save(f"{out}/torch_pred.npy", logits.argmax(axis=1).astype(np.int64))
    top2 = np.sort(logits, axis=1)[:, -2:]
    print(f"exported {out}/vgg16_cifar.onnx; {rows} images (seed {seed}); smallest top-2 logit gap "
          f"{(top2[:, 1] - top2[:, 0]).min():.2e}")


if __name__ == "__main__":
    main()
