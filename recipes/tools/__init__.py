"""Command-line tools that are neither training nor evaluation."""
