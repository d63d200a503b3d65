"""Benchmarks for quart-chat; `python -m bench.fanout --help`."""
