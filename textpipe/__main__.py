import gc
import sys

from .cli import main

status = main()
gc.freeze()  # the process ends here: frozen, torch's and spaCy's objects are not walked again at shutdown (0.3 s)
sys.exit(status)
