"""
The pure core of workspaced: states, the transition table, naming and decisions.

Nothing here does I/O or reads the clock; time and randomness come in as
arguments. The import boundary is checked by ``make lint`` (import-linter).
"""
