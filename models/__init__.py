"""VMDLS models: backbones, heads, losses, the LightningModule, the detector and autoencoders."""
