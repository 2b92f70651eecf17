"""The Dagster layer: partitions, resources, the batch asset, sensors, hooks and schedules.

Thin on purpose: it decides *when* work happens and shows it in the UI; the domain packages decide
*what* happens to each request and money.
"""
