"""One training run: its configuration, the pipeline composing the stages, the --out folder and its lock, the phases, autotune.
It may import textpipe.core, textpipe.text and textpipe.bundle; only cli/ and estimator.py import it.
run.json, checkpoints and the commit into --out live here.
"""
