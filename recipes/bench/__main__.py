"""``python -m recipes.bench``: the train-step benchmark (:mod:`recipes.bench.step`)."""

from recipes.bench.step import main

main()
