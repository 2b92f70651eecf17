"""One dynamic partition per batch: the sensor adds a batch's partition the first time it has work."""

from dagster import DynamicPartitionsDefinition

BATCHES = "batches"
batch_partitions = DynamicPartitionsDefinition(name=BATCHES)
