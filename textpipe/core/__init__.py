"""The tensor core: padded batches -> models -> the training loop, checkpoints, the quantized table's format.
It may import torch and the standard library only, never another textpipe package, so it trains from
pre-numericalized tensors where torchtext and spaCy cannot load (a GPU machine with its own torch).
"""
