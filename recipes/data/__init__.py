"""Data: the embedded corpus (:mod:`~recipes.data.corpus`), pre-tokenized ``.bin`` shards
(:mod:`~recipes.data.shards`) and tokenizers (:mod:`~recipes.data.tokenizers`)."""

from recipes.data.corpus import ByteTokenizer, embedded_corpus, random_batch, stdlib_files

__all__ = ["ByteTokenizer", "embedded_corpus", "random_batch", "stdlib_files"]
