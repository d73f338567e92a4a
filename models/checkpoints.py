"""Reading VMDLS checkpoints: ours, and the original implementation's (Lightning 1.1)."""
from __future__ import annotations



from models.vmdls import VMDLS
from utils.errors import UserError
from utils.torch_files import read_torch_file

# Keys of the original's checkpoints that this implementation does not hold: the CIFAR-10
# autoencoder it always embedded (the autoencoder is a separate checkpoint here).
_FOREIGN_PREFIXES = ("ae.",)


def read_checkpoint(path: str | None) -> dict:
    if not path:
        raise UserError("no model to evaluate: pass --checkpoint_path FILE (main.py prints the path of the one it writes)")
    checkpoint = read_torch_file(path, "--checkpoint_path", "pass a checkpoint written by main.py")
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"--checkpoint_path {path!r} is not a Lightning checkpoint; pass one written by main.py")
    return checkpoint


def checkpoint_hparams(checkpoint: dict) -> dict:
    return dict(checkpoint.get("hyper_parameters") or {})


def load_vmdls(checkpoint: dict, overrides: dict | None = None) -> tuple[VMDLS, list[str]]:
    """Build the model from a checkpoint's hyperparameters (``overrides`` win) and load its
    weights. Returns the model and the names of the weights the checkpoint lacked, other
    than the training statistics that only our checkpoints carry."""
    hparams = {**checkpoint_hparams(checkpoint), **(overrides or {})}
    model = VMDLS(**hparams)
    state = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(_FOREIGN_PREFIXES)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        first = str(error).split("\n")[1].strip() if "\n" in str(error) else str(error)
        raise UserError(f"the checkpoint's weights do not fit a {hparams.get('enc_type')} model with these sizes "
                        f"({first}); pass the --enc_type, --enc_out_dim and --latent_dim it was trained with")
    if result.unexpected_keys:
        raise UserError(f"the checkpoint holds weights this {hparams.get('enc_type')} model lacks "
                        f"(e.g. {result.unexpected_keys[0]}); pass the --enc_type and sizes it was trained with")
    own_buffers = {name for name, _ in model.named_buffers()}
    missing = [k for k in result.missing_keys if k not in own_buffers and not k.startswith("metric_loss.")]
    if "margin_distance" in checkpoint:
        model.metric_loss.neg_margin = float(checkpoint["margin_distance"])
    return model, missing
