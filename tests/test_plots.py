"""The one plots module: files are written atomically and every point is visible."""

from types import SimpleNamespace

import matplotlib.image
import numpy as np

from tinygpt.plots import plot_classifier_history, plot_losses

TRAIN_BLUE = np.array([0x1F, 0x77, 0xB4]) / 255  # matplotlib's first colour: training curves


def blue_pixels(path):
    image = matplotlib.image.imread(path)[..., :3]
    return int(np.all(np.abs(image - TRAIN_BLUE) < 0.02, axis=-1).sum())


def classifier_history(evaluations, epochs):
    return SimpleNamespace(
        train_losses=[0.7, 0.5, 0.4][:evaluations], val_losses=[0.8, 0.6, 0.5][:evaluations],
        examples_seen=[8, 16, 24][:evaluations], train_accs=[0.6, 0.9][:epochs],
        val_accs=[0.5, 0.8][:epochs], num_epochs=epochs, total_examples=8 * evaluations)


def test_a_one_epoch_classifier_plot_shows_its_points(tmp_path):
    # One evaluation and one epoch: a line through one point draws nothing, so before
    # markers the plot held only the legend's samples — as many blue pixels as no data.
    one = plot_classifier_history(classifier_history(1, 1), tmp_path / "one.png")
    empty = plot_classifier_history(classifier_history(0, 0), tmp_path / "empty.png")
    assert one.read_bytes()[:4] == b"\x89PNG"
    assert blue_pixels(one) > blue_pixels(empty) + 20


def test_loss_plot_of_a_run_with_one_evaluation_shows_it(tmp_path):
    def history(n):
        return SimpleNamespace(steps=[5][:n], train_loss=[3.0][:n], val_loss=[3.2][:n],
                               tokens_seen=[640][:n])

    one = plot_losses(history(1), tmp_path / "one.png")
    empty = plot_losses(history(0), tmp_path / "empty.png")
    assert blue_pixels(one) > blue_pixels(empty) + 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.png", "one.png"]
