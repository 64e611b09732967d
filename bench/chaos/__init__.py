"""
Chaos and fuzz runs of the real workspaced processes; see ``docs/reliability.md``.

Run ``make chaos`` (or ``.venv/bin/python -m bench.chaos --quick``).
"""
