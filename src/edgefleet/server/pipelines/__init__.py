"""Model pipelines: per-model configurations (``config``), their runs and steps (``runs``), and the
deployment plans a run creates (``plans``). The steps themselves run on workers
(``edgefleet.worker.pipeline``)."""
