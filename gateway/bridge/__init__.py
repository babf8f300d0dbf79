"""The Kafka bridge: device data from the broker's durable `$ferry-bridge` session (the disk spool)
to Kafka, acknowledged to the broker only once Kafka holds it.

`config` is the `[bridge]` table, `producer` the confluent-kafka side with its poll thread,
`bridge` the in-process MQTT client that ties them to the broker core.
"""
