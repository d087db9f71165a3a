"""Ways into this project's telemetry from other training frameworks.

Each integration adds a way in, never a second copy of reduction, storage or writers: it routes
the framework's own trainer through ``engine.metrics`` and ``events.EventStorage``.

* ``engine.integrations.detectron2.install()``: detectron2's ``SimpleTrainer`` / ``AMPTrainer`` /
  ``DefaultTrainer`` and hooks.
"""
