"""The benchmark harness: model zoo, references, metrics, tracking, gates, pytest plugin."""
