"""Autoencoders for the reconstruction weight r(x) (docs/method.md section 3 step 3, section 4).

Two plain MSE autoencoders, both working in the *normalised* image space (the space the
classifier sees): the input is a normalised batch, the output is a reconstruction in the
same space, with no final sigmoid.

- ``mnist_ae.py``: ``MnistAE``, the original's small conv autoencoder for 28x28 grey images;
- ``resnet_ae.py``: ``ResNetAE``, pl_bolts' AE, whose encoder is the backbone's ResNet
  (``models.backbones.resnet``) and whose decoder mirrors it;
- ``archs.py``: the architecture names ``ARCHS``, ``build_autoencoder`` and ``encoder_out_dim``;
- ``module.py``: ``AutoEncoder``, the LightningModule the training scripts fit;
- ``loading.py``: ``load_autoencoder``, for our checkpoints and the original's.

The scripts' flags and training run live in ``experiments/autoencoders.py``.
"""
from .archs import ARCHS, build_autoencoder, encoder_out_dim
from .loading import load_autoencoder
from .mnist_ae import MnistAE
from .module import AutoEncoder
from .resnet_ae import ResNetAE

__all__ = ["ARCHS", "AutoEncoder", "MnistAE", "ResNetAE", "build_autoencoder", "encoder_out_dim", "load_autoencoder"]
