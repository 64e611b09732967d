"""
Kafka adapters: the CloudEvents codec, the input consumer and the outbox relay.
"""
