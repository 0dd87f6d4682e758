"""Experiments that compare strategies end to end, training and evaluating each the same way: the
CPU demo (:mod:`~recipes.experiments.demo`, what ``bash scripts/demo.sh`` runs)."""
