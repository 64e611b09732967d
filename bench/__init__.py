"""
Benchmarks of workspaced against a re-implementation of the original polling tool.

Run ``make bench`` (or ``make bench-quick``); see ``docs/benchmarks.md``.
"""
