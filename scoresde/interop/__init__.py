r"""Models trained elsewhere, as scoresde SDEs and score functions.

- :class:`~scoresde.interop.ModelWrapper` (:mod:`scoresde.interop.adapters`): any network
  ``net(x, timestep)`` predicting ε, v or x₀ — fed a fractional timestep, a rounded integer
  timestep or continuous ``t``, optionally with learned-variance channels to drop — as a
  ``score_fn(x, t)`` that predicts natively (:class:`~scoresde.predict.NativePrediction`);
- :func:`~scoresde.interop.from_diffusers` (:mod:`scoresde.interop.diffusers_io`): a diffusers
  ``UNet2DModel`` with its scheduler, a pipeline or a local ``save_pretrained`` directory, as
  ``(sde, score_fn)`` on the :class:`~scoresde.DiscreteVPSDE` of its training table.

diffusers itself is optional (``pip install scoresde[diffusers]``) and imported only to load a
directory.
"""

from .adapters import PREDICTION_TYPES, TIME_INPUTS, ModelWrapper, model_output
from .diffusers_io import DIFFUSERS_PREDICTIONS, from_diffusers

__all__ = [
    "ModelWrapper",
    "from_diffusers",
    "model_output",
    "PREDICTION_TYPES",
    "TIME_INPUTS",
    "DIFFUSERS_PREDICTIONS",
]
