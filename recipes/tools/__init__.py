"""Command-line tools that are neither training nor evaluation: the parameter count of every builder
(:mod:`~recipes.tools.params`)."""
