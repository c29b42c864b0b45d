"""Training, data generation and trajectory measurement of the tiny zoo (not installed; run from the
repository root): ``python -m zoo_training.train NAME``, ``python -m zoo_training.measure NAME``,
``python -m zoo_training.measure_video NAME``, ``python -m zoo_training.grid NAME``. What ships (builders,
registry, classifier, the realism report ``python -m harness.zoo.realism NAME``) is ``harness.zoo``."""
