"""Training options (warmup + per-step schedule, gradient clipping, label smoothing, class weights)
and the loop's contract: its named events, its process-wide settings, its stop on a signal."""

import filecmp
import json
import os
import signal

import pytest
import torch
from torch import nn

import textpipe.core.train
from conftest import crash_after_step, make_rows, tiny, write_csv
from textpipe.core.checkpoint import CheckpointStore
from textpipe.core.collate import pad_collate
from textpipe.core.events import listen
from textpipe.core.models import ModelConfig, build_model
from textpipe.core.optim import clip_grad_norm, lr_factor
from textpipe.run.config import PipelineConfig
from textpipe.run.phases import resume_run, train_files
from textpipe.core.runtime import RunContext, run_scope
from textpipe.core.train import TrainConfig, TrainingInterrupted, class_weight_tensor, fit

QUIET = RunContext(quiet=True)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def toy_batches(n_batches: int = 6, batch_size: int = 8, seed: int = 0) -> list:
    """Class 1 iff token 3 occurs; batches of 2 to 6 tokens."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        seqs, labels = [], []
        for _ in range(batch_size):
            ids = torch.randint(4, 20, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g)
            label = int(torch.rand(1, generator=g) < 0.5)
            if label:
                ids[0] = 3
            seqs.append(ids)
            labels.append(label)
        batches.append(pad_collate(list(zip(seqs, labels))))
    return batches


def small_bag() -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(vocab_size=20, num_classes=2, embed_dim=8, ngram_buckets=64, token_dropout=0.0, dropout=0.0))


def spy_train_step(monkeypatch) -> list[dict]:
    """Record, at every step, the learning rates and the loss function that fit uses."""
    seen, real = [], textpipe.core.train.train_step

    def spy(model, batch, optimizers, loss_fn, grad_clip=0.0):
        seen.append({"lrs": [o.param_groups[0]["lr"] for o in optimizers], "loss_fn": loss_fn, "grad_clip": grad_clip})
        return real(model, batch, optimizers, loss_fn, grad_clip)

    monkeypatch.setattr(textpipe.core.train, "train_step", spy)
    return seen


def test_fit_applies_the_per_step_lr_to_every_optimizer(monkeypatch):
    seen = spy_train_step(monkeypatch)
    batches = toy_batches(n_batches=5)
    config = TrainConfig(epochs=2, batch_size=8, lr=0.01, warmup=0.3, schedule="linear_steps", patience=5)
    fit(small_bag(), batches, batches, config, num_classes=2, num_train=40, context=QUIET)
    expected = [0.01 * lr_factor(config, 5)(s) for s in range(10)]
    assert len(seen) == 10
    for step, lrs in enumerate(s["lrs"] for s in seen):
        assert lrs == pytest.approx([expected[step]] * 2), f"step {step}: AdamW and RowAdam both follow the curve"
    assert expected[0] < expected[2] and expected[3] > expected[9], "rises, then falls"


def test_without_warmup_the_linear_schedule_still_steps_per_epoch(monkeypatch):
    seen = spy_train_step(monkeypatch)
    batches = toy_batches(n_batches=3)
    fit(small_bag(), batches, batches, TrainConfig(epochs=2, lr=0.01, schedule="linear", patience=5), num_classes=2, context=QUIET)
    assert [s["lrs"][0] for s in seen] == pytest.approx([0.01] * 3 + [0.005] * 3)


def test_clipping_bounds_the_total_norm_of_dense_and_sparse_gradients():
    model = small_bag()
    batch = toy_batches(1)[0]
    loss = nn.functional.cross_entropy(model(batch.ids, batch.mask), batch.labels) * 1000
    loss.backward()
    assert model.embedding.weight.grad.is_sparse
    before = [p.grad.to_dense().clone() for p in model.parameters()]
    norm_before = clip_grad_norm(model.parameters(), 0.5)
    assert norm_before > 0.5
    after = [p.grad.to_dense() for p in model.parameters()]
    total_after = torch.stack([g.norm() for g in after]).norm().item()
    assert total_after == pytest.approx(0.5, rel=1e-4)
    for b, a in zip(before, after):  # same direction, only shorter
        assert torch.allclose(a, b * (0.5 / norm_before), atol=1e-6)
    assert clip_grad_norm(model.parameters(), 10.0) == pytest.approx(0.5, rel=1e-4), "under the bound: unchanged"


def test_fit_clips_when_asked(monkeypatch):
    norms, real = [], textpipe.core.train.clip_grad_norm

    def record(parameters, max_norm):
        parameters = list(parameters)
        real(parameters, max_norm)
        norms.append(torch.stack([(p.grad.coalesce().values() if p.grad.is_sparse else p.grad).norm() for p in parameters if p.grad is not None]).norm().item())

    monkeypatch.setattr(textpipe.core.train, "clip_grad_norm", record)
    batches = toy_batches(4)
    fit(small_bag(), batches, batches, TrainConfig(epochs=1, lr=0.01, grad_clip=1e-3), num_classes=2, context=QUIET)
    assert len(norms) == 4 and max(norms) <= 1e-3 * 1.0001


def test_balanced_class_weights_are_n_over_k_times_count():
    weights = class_weight_tensor([30, 10, 60], "balanced")
    assert weights.tolist() == pytest.approx([100 / (3 * 30), 100 / (3 * 10), 100 / (3 * 60)])
    assert class_weight_tensor([30, 10], "none") is None
    with pytest.raises(ValueError, match="every class"):
        class_weight_tensor([30, 0], "balanced")


def test_fit_builds_the_loss_from_the_options(monkeypatch):
    seen = spy_train_step(monkeypatch)
    batches = toy_batches(2)
    config = TrainConfig(epochs=1, label_smoothing=0.1, class_weights="balanced")
    fit(small_bag(), batches, batches, config, num_classes=2, class_counts=[30, 10], context=QUIET)
    loss_fn = seen[0]["loss_fn"]
    assert loss_fn.label_smoothing == 0.1
    assert loss_fn.weight.tolist() == pytest.approx([40 / 60, 40 / 20])
    # Label smoothing: even a perfectly confident right answer keeps a loss.
    confident = torch.tensor([[20.0, -20.0]])
    assert nn.CrossEntropyLoss(label_smoothing=0.1)(confident, torch.tensor([0])).item() > 1.0
    assert nn.CrossEntropyLoss()(confident, torch.tensor([0])).item() < 1e-6


def test_the_summed_train_loss_is_the_weighted_loss_optimized():
    """With class weights the step's summed loss is sum(w_i * loss_i), not the weighted mean times the row count."""
    batch, model = toy_batches(1)[0], small_bag()
    weights = torch.tensor([0.25, 3.0])
    with torch.no_grad():
        per_row = nn.CrossEntropyLoss(reduction="none")(model(batch.ids, batch.mask).float(), batch.labels)
    expected = (weights[batch.labels] * per_row).sum().item()
    optimizers = [torch.optim.SGD(model.parameters(), lr=0.0)]
    loss_sum, _ = textpipe.core.train.train_step(model, batch, optimizers, nn.CrossEntropyLoss(weight=weights))
    assert loss_sum == pytest.approx(expected, rel=1e-5)
    unweighted, _ = textpipe.core.train.train_step(model, batch, optimizers, nn.CrossEntropyLoss())
    assert unweighted == pytest.approx(per_row.sum().item(), rel=1e-5)


def test_config_rejects_bad_options():
    for bad in ({"warmup": 1.0}, {"warmup": -0.1}, {"grad_clip": -1}, {"label_smoothing": 1.0}, {"class_weights": "auto"}, {"schedule": "cosine"}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def pipeline_config(**train) -> PipelineConfig:
    return tiny(data={"shuffle_buffer": 100}, train={"epochs": 3, "lr": 0.02, "checkpoint_every": 5, **train})


def test_the_pipeline_passes_label_counts_and_resumes_a_per_step_schedule_exactly(tmp_path):
    """Every option on, crashed mid-epoch (after step 17, the step-15 checkpoint on disk, epoch 2): the resumed run
    ends with the uninterrupted run's exact weights, so the per-step scheduler's state
    travels in the checkpoint."""
    rows = make_rows(300, seed=1) + [("neg", "dull and boring film .")] * 60  # imbalanced on purpose
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", make_rows(60, seed=3))
    config = pipeline_config(warmup=0.2, schedule="linear_steps", grad_clip=1.0, label_smoothing=0.1, class_weights="balanced")
    train_files(train, test, tmp_path / "reference", config=config, quiet=True)
    run = json.loads((tmp_path / "reference" / "run.json").read_text())
    assert run["label_counts"] == {"neg": 210, "pos": 150}

    with crash_after_step(17, RuntimeError("simulated crash"), after_checkpoint=15), pytest.raises(RuntimeError, match="simulated crash"):
        train_files(train, test, tmp_path / "crashed", config=config, quiet=True)
    resume_run(tmp_path / "crashed", quiet=True)
    for name in ("weights.safetensors", "metrics.json"):
        assert filecmp.cmp(tmp_path / "reference" / name, tmp_path / "crashed" / name, shallow=False), name


class ResumableList(list):
    """Batches with the ``state_dict`` of a resumable loader, so fit may checkpoint mid-epoch."""

    def state_dict(self) -> dict:
        return {}


def test_the_loop_announces_each_step_epoch_and_checkpoint_by_number(tmp_path):
    announced, saved = [], []
    stops = [listen(name, lambda name=name, **info: announced.append((name, info.get("step", info.get("epoch")))))
             for name in ("step_done", "evaluated", "epoch_done")]
    stops.append(listen("checkpoint_saved", lambda step, path, **_: saved.append((step, path.name))))  # from the writer thread
    batches = ResumableList(toy_batches(3))
    try:
        context = RunContext(quiet=True, checkpoints=CheckpointStore(tmp_path, keep=5))
        fit(small_bag(), batches, batches, TrainConfig(epochs=2, patience=5, checkpoint_every=2), num_classes=2, context=context)
    finally:
        for stop in stops:
            stop()
    epoch = lambda e, steps: [("step_done", s) for s in steps] + [("evaluated", e), ("epoch_done", e)]  # noqa: E731
    assert announced == epoch(1, [1, 2, 3]) + epoch(2, [4, 5, 6])
    assert saved == [(2, "step-000000002.pt"), (4, "step-000000004.pt"), (6, "step-000000006.pt")]  # all on disk when fit returns


def process_settings() -> tuple:
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), torch.are_deterministic_algorithms_enabled()


def test_fit_changes_no_process_wide_setting_and_run_scope_puts_them_back():
    before, during = process_settings(), []
    stop_listening = listen("step_done", lambda **_: during.append(process_settings()))
    batches = toy_batches(2)
    config = TrainConfig(epochs=1, deterministic=True)
    try:
        fit(small_bag(), batches, batches, config, num_classes=2, context=QUIET)  # from a notebook, say
        assert during == [before] * 2, "fit alone installs no handler and leaves deterministic mode as it was"
        with run_scope(config.deterministic) as stop:
            fit(small_bag(), batches, batches, config, num_classes=2, context=RunContext(quiet=True, stop=stop))
        assert during[-1] == (stop._handle, stop._handle, True)
    finally:
        stop_listening()
    assert process_settings() == before


def test_a_signal_inside_run_scope_stops_at_the_next_step_with_a_checkpoint(tmp_path):
    batches = ResumableList(toy_batches(4))
    stop_listening = listen("step_done", lambda step, **_: step == 2 and os.kill(os.getpid(), signal.SIGINT))
    try:
        with run_scope() as stop, pytest.raises(TrainingInterrupted) as stopped:
            context = RunContext(quiet=True, checkpoints=CheckpointStore(tmp_path, keep=2), stop=stop)
            fit(small_bag(), batches, batches, TrainConfig(epochs=1), num_classes=2, context=context)
    finally:
        stop_listening()
    assert (stopped.value.signal_name, stopped.value.checkpoint) == ("SIGINT", str(tmp_path / "step-000000003.pt"))
    assert CheckpointStore(tmp_path).load_latest()["state"]["step"] == 3
