"""How good a model is and where it fails: metrics, tables, plots and mistakes, written to a folder.

:func:`summarize` turns the logits of a labelled set into the report's numbers:
``overall`` (accuracy, macro-F1, loss, n: the same numbers as
:func:`textpipe.core.metrics.evaluate`; and the expected calibration error ``ece`` and ``brier``
score of the probabilities), ``per_class`` precision / recall / F1 / support,
the ``confusion`` matrix (rows are the gold labels, columns the predictions) and
``calibration`` (:func:`textpipe.core.calibration.calibration_summary`: the reliability bins
and the accuracy/coverage curve).
:func:`write_report` writes them into a folder as

- ``report.md``: the same numbers as Markdown tables, the plots, the worst mistakes;
- ``confusion_matrix.png``, ``learning_curves.png``, ``reliability.png`` (the reliability diagram: per
  confidence bin, accuracy against mean confidence) and ``coverage.png`` (the accuracy/coverage curve
  of a confidence threshold) (matplotlib, Agg backend, fixed pixel size);
- ``misclassified.csv``: ``text, gold, predicted, confidence`` of every wrong
  prediction, the most confident mistakes first.

matplotlib is imported inside the plotting functions only, so ``import textpipe``
stays light and nothing here needs a display.

Example:
    >>> summary = summarize(logits, gold, labels=["neg", "pos"])
    >>> summary["per_class"]["pos"]["f1"]
    >>> write_report("runs/mine", summary, mistakes=misclassified(texts, logits, gold, labels))
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import torch
from torch import nn

from ..core.files import atomic_write, atomic_write_text
from ..core.calibration import at_threshold, calibration_summary
from ..core.metrics import confusion_matrix, overall_metrics, per_class_metrics
from ..core.multilabel import bce_log_loss, multi_hot, multilabel_report

REPORT, CONFUSION_PNG, CURVES_PNG, MISCLASSIFIED = "report.md", "confusion_matrix.png", "learning_curves.png", "misclassified.csv"
RELIABILITY_PNG, COVERAGE_PNG = "reliability.png", "coverage.png"
CALIBRATION_NOTE = ("A row's confidence is its top probability. The expected calibration error (ECE) puts the rows in 15 equal-width "
                    "confidence bins and averages |mean confidence - accuracy| over them, weighted by their rows: 0.02 means the "
                    "confidence is 2 points off on average. The Brier score is the mean squared distance between the probabilities "
                    "and the gold label's one-hot row (0 is perfect). With `predict --threshold P` a row whose confidence is below P "
                    "is left unlabelled: the table gives, for each P, the share of rows still labelled (coverage) and their accuracy.")
FEATURES_NOTE = ("The words of the training vocabulary that push hardest toward each label: the logit of the word alone "
                 "over an empty text's, relative to the mean over labels. For the bag model that is exactly the word's "
                 "coefficient (its row seen through the classifier head); for cnn, gru and transformer it is the word "
                 "out of context, an approximation.")
PNG_SIZE = (800, 600)  # pixels, width x height: both plots are saved at exactly this size
_DPI = 100


class Mistake(NamedTuple):
    """One wrong prediction, as a row of ``misclassified.csv``.

    Example:
        >>> Mistake("a dull film", gold="neg", predicted="pos", confidence=0.91)
    """

    text: str
    gold: str
    predicted: str
    confidence: float  # the model's probability for the label it (wrongly) predicted


def summarize(logits: torch.Tensor, gold: torch.Tensor, labels: Sequence[str], threshold: float | None = None) -> dict:
    """``{"overall", "per_class", "confusion", "calibration"}`` of ``logits`` ``(N, C)`` against gold label indices ``(N,)``;
    with ``threshold``, ``calibration["at_threshold"]``: the coverage and accuracy of ``predict --threshold``."""
    predicted = logits.argmax(1)
    confusion = confusion_matrix(predicted, gold, len(labels))
    overall = overall_metrics(confusion)
    overall["loss"] = round(nn.functional.cross_entropy(logits, gold).item(), 6)  # as metrics.evaluate computes it
    calibration = calibration_summary(logits.softmax(1), gold)
    overall["ece"], overall["brier"] = calibration["ece"], calibration["brier"]
    if threshold is not None:
        calibration["at_threshold"] = at_threshold(logits.softmax(1), gold, threshold)
    return {
        "overall": overall,
        "per_class": per_class_metrics(confusion, labels),
        "confusion": {"labels": list(labels), "matrix": confusion.tolist()},
        "calibration": calibration,
    }


def summarize_multilabel(logits: torch.Tensor, gold: torch.Tensor, labels: Sequence[str], thresholds: torch.Tensor) -> dict:
    """``{"overall", "per_class", "multi_label"}`` of multi-label ``logits`` ``(N, L)`` against packed gold label sets:
    micro and macro precision / recall / F1, subset accuracy (also as ``accuracy``), Hamming loss and mean binary
    cross-entropy; a label predicted where its probability reaches its threshold."""
    targets = multi_hot(gold, len(labels))
    report = multilabel_report(logits.sigmoid() >= thresholds, targets.bool(), labels)
    overall = {"accuracy": report["subset_accuracy"], **{f"{avg}_{k}": v for avg in ("micro", "macro") for k, v in report[avg].items()},
               "subset_accuracy": report["subset_accuracy"], "hamming_loss": report["hamming_loss"],
               "loss": round(bce_log_loss(logits, targets), 6), "n": report["rows"]}
    return {"overall": overall, "per_class": report["per_label"],
            "multi_label": {"thresholds": {label: round(float(t), 6) for label, t in zip(labels, thresholds.tolist())}}}


def misclassified_sets(texts: Iterable[str], logits: torch.Tensor, gold: torch.Tensor, labels: Sequence[str], thresholds: torch.Tensor) -> list[Mistake]:
    """Every multi-label row whose predicted set is not its gold set (sets written ``a|b``), the most confident
    mistakes first: a row's confidence is its surest wrong call (a wrong label's probability, a missed one's 1 - p)."""
    probs = logits.sigmoid()
    predicted, targets = probs >= thresholds, multi_hot(gold, len(labels)).bool()
    sureness = torch.where(predicted != targets, torch.where(predicted, probs, 1 - probs), torch.zeros_like(probs)).amax(1)
    mistakes = []
    for i, text in enumerate(texts):
        if not torch.equal(predicted[i], targets[i]):
            mistakes.append(Mistake(text, _joined(targets[i], labels), _joined(predicted[i], labels), round(float(sureness[i]), 6)))
    return sorted(mistakes, key=lambda m: -m.confidence)


def _joined(row: torch.Tensor, labels: Sequence[str]) -> str:
    return "|".join(labels[j] for j in row.nonzero().flatten().tolist())


def misclassified(texts: Iterable[str], logits: torch.Tensor, gold: torch.Tensor, labels: Sequence[str]) -> list[Mistake]:
    """Every wrong prediction, the most confident first (ties keep input order).

    ``texts`` is consumed alongside the rows of ``logits``; only the texts of
    mistakes are kept, so a large evaluation file is not held in memory.
    """
    probs = logits.softmax(-1)
    confidence, predicted = probs.max(1)
    wrong = set((predicted != gold).nonzero().flatten().tolist())
    mistakes = []
    count = 0
    for i, text in enumerate(texts):
        count += 1
        if i in wrong:
            mistakes.append(Mistake(text, labels[int(gold[i])], labels[int(predicted[i])], round(confidence[i].item(), 6)))
    if count != len(gold):
        raise ValueError(f"{count} texts for {len(gold)} predictions: the texts and the predictions do not line up")
    return sorted(mistakes, key=lambda m: -m.confidence)


def write_report(
    out: str | Path,
    summary: dict,
    mistakes: Sequence[Mistake],
    history: Sequence[dict] | None = None,
    *,
    title: str = "textpipe report",
    notes: Sequence[str] = (),
    features: dict[str, list[tuple[str, float]]] | None = None,
    plots: bool = True,
) -> list[Path]:
    """Write ``report.md``, the PNG plots and ``misclassified.csv`` into ``out``; return their paths.

    ``history`` is the per-epoch list of :func:`textpipe.core.train.fit` (``metrics.json``'s
    ``"history"``); without it there is no learning-curve plot. ``features`` (label ->
    ``[(word, score)]``, from :func:`textpipe.bundle.explain.strongest_features`) adds a section. ``plots=False``: the
    PNGs are drawn elsewhere (:func:`write_plots`, another process), the Markdown links them all the same.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = [write_misclassified(out / MISCLASSIFIED, mistakes)] + (write_plots(out, summary, history) if plots else [])
    markdown = report_markdown(summary, mistakes, history, title=title, notes=notes, has_curves=bool(history), features=features)
    atomic_write_text(out / REPORT, markdown)
    return [out / REPORT, *written]


def write_plots(out: str | Path, summary: dict, history: Sequence[dict] | None = None) -> list[Path]:
    """The report's PNGs into ``out``: the confusion matrix (single-label), the learning curves (with ``history``), the
    reliability diagram and the accuracy/coverage curve (with calibration scores); their paths."""
    out, written = Path(out), []
    if "confusion" in summary:  # multi-label scores have none
        written.append(plot_confusion(summary["confusion"]["matrix"], summary["confusion"]["labels"], out / CONFUSION_PNG))
    if history:
        written.append(plot_learning_curves(history, out / CURVES_PNG))
    if "calibration" in summary:
        written += [plot_reliability(summary["calibration"]["reliability"], out / RELIABILITY_PNG),
                    plot_coverage(summary["calibration"]["coverage_curve"], out / COVERAGE_PNG)]
    return written


def load_plotting() -> None:
    """Import what :func:`write_plots` draws with (matplotlib's Figure and its Agg canvas), ahead of the first plot."""
    from matplotlib.backends import backend_agg  # noqa: F401
    from matplotlib.figure import Figure  # noqa: F401


def report_markdown(
    summary: dict,
    mistakes: Sequence[Mistake],
    history: Sequence[dict] | None = None,
    *,
    title: str = "textpipe report",
    notes: Sequence[str] = (),
    has_curves: bool = False,
    show_mistakes: int = 10,
    features: dict[str, list[tuple[str, float]]] | None = None,
) -> str:
    """The report as Markdown: overall numbers, per-class table, confusion matrix, history, worst mistakes."""
    o = summary["overall"]
    lines = [f"# {title}", "", *notes, "" if notes else None, "## Overall", ""]
    if "multi_label" in summary:
        keys = ["micro_f1", "macro_f1", "micro_precision", "micro_recall", "subset_accuracy", "hamming_loss", "loss"]
        lines += _table(["rows", *keys], [[o["n"], *(f"{o[k]:.4f}" for k in keys)]])
    else:
        lines += _table(["rows", "accuracy", "macro-F1", "loss"], [[o["n"], f"{o['accuracy']:.4f}", f"{o['macro_f1']:.4f}", f"{o['loss']:.4f}"]])
    lines += ["", "## Per label" if "multi_label" in summary else "## Per class", ""]
    thresholds = summary.get("multi_label", {}).get("thresholds")
    rows = [[_cell(label), f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1']:.4f}", m["support"], *([f"{thresholds[label]:.2f}"] if thresholds else [])]
            for label, m in summary["per_class"].items()]
    lines += _table(["label", "precision", "recall", "F1", "support", *(["threshold"] if thresholds else [])], rows)
    if "confusion" in summary:
        labels, matrix = summary["confusion"]["labels"], summary["confusion"]["matrix"]
        lines += ["", "## Confusion matrix", "", "Rows are the gold labels, columns the predicted ones.", ""]
        lines += _table(["gold \\ predicted", *map(_cell, labels)], [[_cell(label), *row] for label, row in zip(labels, matrix)])
        lines += ["", f"![confusion matrix]({CONFUSION_PNG})"]
    if "calibration" in summary:
        lines += calibration_markdown(summary["calibration"])
    if history:
        lines += ["", "## Training", ""]
        keys = ["train_loss", "train_accuracy", "dev_loss", "dev_accuracy", *(["dev_micro_f1"] if "dev_micro_f1" in history[0] else []), "dev_macro_f1"]
        lines += _table(["epoch", *keys], [[h["epoch"], *(f"{h[k]:.4f}" for k in keys)] for h in history])
        if has_curves:
            lines += ["", f"![learning curves]({CURVES_PNG})"]
    if features:
        lines += ["", "## Strongest features", "", FEATURES_NOTE, ""]
        lines += _table(["label", "words (score)"], [[_cell(label), _cell(", ".join(f"{w} ({s:.2f})" for w, s in words))] for label, words in features.items()])
    wrong = "have a predicted label set that is not their own" if "multi_label" in summary else "are misclassified"
    lines += ["", "## Mistakes", "", f"{len(mistakes)} of {o['n']} rows {wrong}; all are in `{MISCLASSIFIED}`, the most confident first."]
    if mistakes:
        lines += ["", *_table(["confidence", "gold", "predicted", "text"], [
            [f"{m.confidence:.3f}", _cell(m.gold), _cell(m.predicted), _cell(_shorten(m.text, 120))] for m in mistakes[:show_mistakes]
        ])]
    return "\n".join(line for line in lines if line is not None) + "\n"


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path) -> Path:
    """A heat map of the confusion matrix with the counts written in the cells."""
    counts = torch.tensor(matrix, dtype=torch.float64)
    # Colour by the share of each gold row, so a rare class's mistakes show as clearly as a common one's.
    shares = counts / counts.sum(1, keepdim=True).clamp(min=1)
    fig = _figure()
    ax = fig.subplots()
    image = ax.imshow(shares.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="share of the gold row")
    ticks = range(len(labels))
    ax.set_xticks(ticks, [_shorten(l, 15) for l in labels], rotation=45 if len(labels) > 4 else 0, ha="right" if len(labels) > 4 else "center")
    ax.set_yticks(ticks, [_shorten(l, 15) for l in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title("confusion matrix")
    if len(labels) <= 20:
        for i in ticks:
            for j in ticks:
                ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
    return _save(fig, path)


def calibration_markdown(calibration: dict) -> list[str]:
    """The report's calibration section: ECE and Brier, what they mean, the two plots, the coverage at a few thresholds."""
    lines = ["", "## Calibration", "", CALIBRATION_NOTE, ""]
    lines += _table(["ECE", "Brier"], [[f"{calibration['ece']:.4f}", f"{calibration['brier']:.4f}"]])
    shown = [point for point in calibration["coverage_curve"] if point["threshold"] in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)]
    shown += [calibration["at_threshold"]] if "at_threshold" in calibration else []
    lines += ["", *_table(["threshold", "coverage", "accuracy"], [
        [f"{p['threshold']:.2f}", f"{p['coverage']:.4f}", "-" if p["accuracy"] is None else f"{p['accuracy']:.4f}"] for p in shown])]
    return lines + ["", f"![reliability diagram]({RELIABILITY_PNG})", "", f"![accuracy and coverage by threshold]({COVERAGE_PNG})"]


def plot_reliability(bins: Sequence[dict], path: str | Path) -> Path:
    """The reliability diagram: per confidence bin, its accuracy (bars) against the diagonal of perfect calibration."""
    fig = _figure()
    ax = fig.subplots()
    ax.bar([b["low"] for b in bins], [b["accuracy"] for b in bins], width=[b["high"] - b["low"] for b in bins], align="edge",
           edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["confidence"] for b in bins], "o", color="black", label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy", title="reliability diagram")
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_coverage(curve: Sequence[dict], path: str | Path) -> Path:
    """Accuracy and coverage (the share of rows labelled) as the confidence threshold rises."""
    fig = _figure()
    ax = fig.subplots()
    ax.plot([p["threshold"] for p in curve], [p["coverage"] for p in curve], marker="o", label="coverage")
    kept = [p for p in curve if p["accuracy"] is not None]
    ax.plot([p["threshold"] for p in kept], [p["accuracy"] for p in kept], marker="o", label="accuracy of the rows labelled")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="threshold (predict --threshold)", title="accuracy / coverage")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return _save(fig, path)


def plot_learning_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Loss (left) and accuracy (right) per epoch, train and dev."""
    epochs = [h["epoch"] for h in history]
    fig = _figure()
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.plot(epochs, [h[f"train_{metric}"] for h in history], marker="o", label="train")
        ax.plot(epochs, [h[f"dev_{metric}"] for h in history], marker="o", label="dev")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, path)


def write_misclassified(path: str | Path, mistakes: Sequence[Mistake]) -> Path:
    """``text,gold,predicted,confidence``, one row per mistake, written atomically."""
    path = Path(path)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(Mistake._fields)
    writer.writerows(mistakes)
    atomic_write_text(path, buffer.getvalue())
    return path


def _figure():
    # A bare Figure, not pyplot: no global figure registry, no backend switch in the
    # caller's process (a notebook keeps its own), and pyplot's import time saved.
    from matplotlib.figure import Figure

    return Figure(figsize=(PNG_SIZE[0] / _DPI, PNG_SIZE[1] / _DPI), dpi=_DPI)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()  # moves the axes inside the figure; the figure's pixel size stays PNG_SIZE
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=_DPI))  # no bbox_inches="tight": it would change the size
    return path


def _table(header: list, rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def _cell(text: str) -> str:
    """Text made safe for one Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def relative_path(path: str | Path, folder: str | Path) -> str:
    """``path`` as seen from ``folder`` (the bundle or report folder): a report names no absolute path,
    so it reads the same wherever the folder is copied. A ``torchtext:`` name stays as it is.

    Example:
        >>> relative_path("/data/mine/train.csv", "/data/runs/mine")
        '../../mine/train.csv'
    """
    if str(path).startswith("torchtext:"):
        return str(path)
    return os.path.relpath(Path(path).resolve(), Path(folder).resolve())


def search_notes(search: dict | None) -> list[str]:
    """The report's table of an autotune search (``run.json``'s ``"autotune"``); nothing without one."""
    if not search:
        return []
    lines = ["", f"Autotune tried {len(search['trials'])} configurations in {search['search_seconds']} s (budget "
             f"{search['budget_seconds']} s), scored on dev only; the chosen one is in bold.", "",
             "| # | dev accuracy | dev loss | epochs | seconds | changes to the starting configuration |", "|---|---|---|---|---|---|"]
    for i, trial in enumerate(search["trials"], 1):
        changes = ", ".join(f"`{section}.{key} = {value}`" for section, values in trial["changes"].items() for key, value in values.items()) or "none"
        row = f"| {i} | {trial['dev_accuracy']:.4f} | {trial['dev_loss']:.4f} | {trial['epochs']} | {trial['seconds']} | {changes} |"
        lines.append(row.replace(f"| {i} |", f"| **{i}** |") if trial["changes"] == search["chosen"] else row)
    if search.get("encoder"):  # the sentence encoder knob: encoded ahead of its trial, or skipped and why
        lines += ["", search["encoder"]["note"][0].upper() + search["encoder"]["note"][1:] + "."]
    return lines
