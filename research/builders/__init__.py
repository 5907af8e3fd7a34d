"""Config -> components: the only code besides the CLI and ``config.py`` that reads the whole config.

Each builder maps settings to the plain, typed arguments of one component (a model, a transform,
loaders, an optimiser...); the components themselves never see ``cfg``.

- :mod:`.model`: the model and its train/eval preprocessing (training and inference);
- :mod:`.data`: the run's images, the validation split and the loaders (training, export's parity images);
- :mod:`.training`: optimiser, schedule, loss and the :class:`~research.engine.trainer.Trainer` (training only).

The face detectors are built by :mod:`research.faces.factory`. This ``__init__`` imports nothing,
so the inference side can build a model without importing the trainer.
"""
