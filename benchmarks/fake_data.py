"""Write small random stand-ins for every dataset the original README's commands read.

For the GPU check that runs those commands unchanged (benchmarks/device_check.sh) on a
machine with no internet: CIFAR-10/100 pickles, the ODIN folders, the Omniglot tree and
MNIST IDX files, in torchvision's layouts under DATA_DIR. Random pixels: these runs check
that the commands work end to end, not what they score.

    python benchmarks/fake_data.py ./data
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from conftest import make_mnist_arrays, write_cifar, write_idx, write_images  # noqa: E402


def main(root: str) -> None:
    write_cifar(root, 10, seed=1, per_class_train=60, per_class_test=20)
    write_cifar(root, 100, seed=2, per_class_train=30, per_class_test=5)
    for folder, size in (("Imagenet", (36, 36)), ("Imagenet_resize", (32, 32)), ("LSUN", (36, 36)),
                         ("LSUN_resize", (32, 32))):
        write_images(os.path.join(root, "openset", folder, "test"), 100, size=size, ext=".jpg")
    for alphabet in ("Alphabet_A", "Alphabet_B"):
        write_images(os.path.join(root, "omniglot-py", "images_evaluation", alphabet, "character01"), 50,
                     size=(105, 105), mode="L")
    for split, per_class, seed in (("train", 60, 3), ("t10k", 20, 4)):
        images, labels = make_mnist_arrays(seed, per_class)
        write_idx(os.path.join(root, "MNIST", "raw", f"{split}-images-idx3-ubyte"), images, gz=True)
        write_idx(os.path.join(root, "MNIST", "raw", f"{split}-labels-idx1-ubyte"), labels, gz=True)
    print(f"fake datasets written under {root}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "./data")
