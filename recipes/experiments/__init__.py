"""Experiments that compare strategies end to end, training and evaluating each the same way: the
CPU demo (:mod:`~recipes.experiments.demo`, what ``bash scripts/demo.sh`` runs) and the multi-seed
study (:mod:`~recipes.experiments.study`: variants × seeds × tasks, paired differences with
confidence intervals; :mod:`~recipes.experiments.study_config`, :mod:`~recipes.experiments.study_run`,
:mod:`~recipes.experiments.study_report`, :mod:`~recipes.experiments.study_plots`), and the budget
ladder's evidence report across its runs (:mod:`~recipes.experiments.ladder_report`; rendered by
:mod:`~recipes.experiments.ladder_render`)."""
