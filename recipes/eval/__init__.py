"""Evaluation: multi-query associative recall (:mod:`~recipes.eval.mqar`), SATFormer gate analysis
(:mod:`~recipes.eval.analyze`) and the lm-evaluation-harness adapter
(:mod:`~recipes.eval.lm_eval_adapter`, optional extra ``eval``)."""
