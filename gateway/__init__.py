"""Ferry's edge gateway: a durable MQTT 3.1.1/5.0 broker and a disk-spooled bridge to Kafka."""
