"""
PostgreSQL storage: the schema, its migrations and the one place that writes state.
"""
