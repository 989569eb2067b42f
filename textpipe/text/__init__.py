"""The text stages: files -> examples -> tokens -> ids -> padded batches (sources, tokenizer, vocab, vectors, encoders, caches, dataset, loader).
It may import textpipe.core (collate_fn, batching, atomic files); torchtext and spaCy are loaded here and only here.
Nothing in it knows about models, bundles or runs.
"""
