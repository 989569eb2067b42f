"""The one place textpipe imports torchtext, so its deprecation warning is silenced once."""

import torchtext

torchtext.disable_torchtext_deprecation_warning()
