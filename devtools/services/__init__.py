"""
The services the project starts itself: embedded PostgreSQL, Tansu, Apache Kafka.
"""
