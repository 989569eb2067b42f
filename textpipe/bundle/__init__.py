"""What a trained model becomes: the bundle on disk, info, explanations, prediction, quantization, the report, serving.
It may import textpipe.core and textpipe.text, never textpipe.run: a bundle predicts without the code that trained it.
Every file it reads is checked (sha256 manifest, types, shapes) before it is trusted.
"""
