import gc
import sys

# Young objects collected every 20,000 allocations, not 700: importing torch and spaCy makes some
# 200k objects that all live on, which the default walked again and again (0.1 s of every command),
# and predicting a block of rows makes and drops thousands of small containers (0.1 s of 100k rows).
gc.set_threshold(20_000, 10, 10)

from .cli import main  # noqa: E402

status = main()
gc.freeze()  # the process ends here: frozen, its objects are not walked again at shutdown (0.3 s)
sys.exit(status)
