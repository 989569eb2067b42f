"""The vocabulary's special tokens and their ids, in a module that imports nothing.

:mod:`textpipe.text.vocab` builds every vocabulary with these (and re-exports them: it is
where a user looks for them); :mod:`textpipe.core.collate` pads with ``PAD_ID``. They
live here, not in ``vocab.py``, because the tensor core must not import torchtext,
even to read a constant, and a copy of the number could drift.

Example:
    >>> from textpipe.core.specials import PAD_ID, SPECIALS
    >>> SPECIALS[PAD_ID]
    '<pad>'
"""

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
SPECIALS = (PAD, UNK)  # in id order
