"""Each plot writes a non-empty PNG that PIL can open."""

import numpy as np
import pytest
from PIL import Image

from utils import metrics, plots


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] > 100 and image.size[1] > 100


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    num_classes = 3
    labels = rng.integers(0, num_classes + 1, size=120)
    scores = rng.normal(size=120) + (labels < num_classes)
    pred = np.clip(labels, 0, num_classes - 1)
    return scores, pred, labels, num_classes


def test_plot_roc(tmp_path, data):
    scores, _, labels, num_classes = data
    known = labels < num_classes
    fpr, tpr, _ = metrics.roc_points(scores, known)
    path = plots.plot_roc(fpr, tpr, metrics.auroc(scores, known), tmp_path / "roc.png",
                          fpr_at_95=metrics.fpr_at_tpr(scores, known))
    assert_png(path)


def test_plot_f1_curve(tmp_path, data):
    scores, pred, labels, num_classes = data
    thresholds, f1 = metrics.macro_f1_curve(scores, pred, labels, num_classes)
    t95 = metrics.threshold_at_tpr(scores, labels < num_classes)
    assert_png(plots.plot_f1_curve(thresholds, f1, tmp_path / "sub" / "f1.png", threshold_95=t95))


def test_plot_score_histograms(tmp_path, data):
    scores, _, labels, num_classes = data
    known = labels < num_classes
    assert_png(plots.plot_score_histograms(scores[known], scores[~known], tmp_path / "h.png",
                                           threshold=0.0))


@pytest.mark.parametrize("num_classes", [3, 15])
def test_plot_tsne_subsamples_and_marks_unknown(tmp_path, num_classes):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, num_classes + 1, size=90)
    features = rng.normal(size=(90, 8)) + labels[:, None]
    path = plots.plot_tsne(features, labels, num_classes, tmp_path / "tsne.png", max_points=60)
    assert_png(path)


def test_a_failed_write_leaves_the_previous_figure_whole(tmp_path, data, monkeypatch):
    from matplotlib.figure import Figure

    from utils.errors import UserError

    scores, _, labels, num_classes = data
    known = labels < num_classes
    fpr, tpr, _ = metrics.roc_points(scores, known)
    path = plots.plot_roc(fpr, tpr, metrics.auroc(scores, known), tmp_path / "roc.png")
    before = (tmp_path / "roc.png").read_bytes()

    def disk_full(self, target, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"\x89PNG half")  # half a file, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    with pytest.raises(UserError, match="roc.png"):
        plots.plot_roc(fpr, tpr, 0.5, path)
    assert (tmp_path / "roc.png").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["roc.png"]  # no temporary file left
    assert_png(path)


def test_plotting_changes_no_global_state(tmp_path):
    """Importing and using the module neither imports pyplot nor chooses a backend."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, matplotlib\n"
        "before = dict.__getitem__(matplotlib.rcParams, 'backend')\n"
        "from utils import plots\n"
        f"plots.plot_roc([0, 1], [0, 1], 0.5, {str(tmp_path / 'roc.png')!r})\n"
        "print('matplotlib.pyplot' in sys.modules, dict.__getitem__(matplotlib.rcParams, 'backend') == before)\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False", "True"]
    assert_png(tmp_path / "roc.png")
