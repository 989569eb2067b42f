"""The training loop's bookkeeping: early stopping on a plateau and min_delta, and the epoch line."""

from textpipe.core.train import TrainConfig, TrainState, epoch_line, record_epoch


def test_a_plateau_stops_training_even_while_dev_loss_falls():
    losses = [0.9, 0.7, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05]
    state, config = TrainState(), TrainConfig(epochs=60, patience=2)
    marks = []
    while not state.finished:
        state.seen = 1  # one row trained this epoch
        marks.append(record_epoch(state, {"accuracy": 1.0, "macro_f1": 1.0, "loss": losses[len(marks)]}, config))
    assert len(marks) == 5  # progress at epoch 1, then at most 2 * patience epochs of ties
    assert all(marks) and state.best_epoch == 5  # the best weights are still the lowest-loss tie



def test_min_delta_and_the_epoch_line_shows_dev_loss():
    accuracies = [0.80, 0.805, 0.81, 0.812, 0.813, 0.814, 0.815]
    state, config = TrainState(), TrainConfig(epochs=60, patience=3, min_delta=0.02)
    marks = []
    while not state.finished:
        state.seen = 1
        marks.append(record_epoch(state, {"accuracy": accuracies[len(marks)], "macro_f1": 0.5, "loss": 0.5}, config))
    # Each epoch is a new best (higher accuracy), but rises under 0.02 are no progress:
    # 2 * patience epochs after the progress at epoch 1 it stops.
    assert (state.epoch - 1, state.best_epoch) == (7, 7)
    assert "dev acc 0.8000 f1 0.5000 loss 0.5000 *" in epoch_line(state.history[0], improved=marks[0])
