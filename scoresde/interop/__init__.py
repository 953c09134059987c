r"""Models trained elsewhere, as scoresde SDEs and score functions.

- :class:`~scoresde.interop.ModelWrapper` (:mod:`scoresde.interop.adapters`): any network
  ``net(x, timestep)`` predicting ε, v or x₀ — fed a fractional timestep, a rounded integer
  timestep or continuous ``t``, optionally with learned-variance channels to drop — as a
  ``score_fn(x, t)`` that predicts natively (:class:`~scoresde.predict.NativePrediction`);
- :func:`~scoresde.interop.from_diffusers` (:mod:`scoresde.interop.diffusers_io`): a diffusers
  ``UNet2DModel`` with its scheduler, a pipeline or a local ``save_pretrained`` directory, as
  ``(sde, score_fn)`` on the :class:`~scoresde.DiscreteVPSDE` of its training table;
- :mod:`scoresde.interop.training`: diffusers networks as scoresde score networks —
  :class:`~scoresde.interop.DiffusersUNet`, trained by :class:`~scoresde.training.Trainer`, saved
  and rebuilt through a ``"diffusers_unet"`` model spec
  (:func:`~scoresde.interop.diffusers_model_spec`, :func:`~scoresde.interop.diffusers_score_model`);
  :func:`~scoresde.interop.load_local_model` reads a scoresde checkpoint or a diffusers folder for
  ``scoresde sample --model`` and ``scoresde compare --model``.

diffusers itself is optional (``pip install scoresde[diffusers]``) and imported only to load a
directory.
"""

from . import training
from .adapters import PREDICTION_TYPES, TIME_INPUTS, ModelWrapper, model_output
from .diffusers_io import DIFFUSERS_PREDICTIONS, from_diffusers
from .training import DiffusersUNet, LocalModel, diffusers_model_spec, diffusers_score_model, load_local_model

__all__ = [
    "ModelWrapper",
    "from_diffusers",
    "model_output",
    "PREDICTION_TYPES",
    "TIME_INPUTS",
    "DIFFUSERS_PREDICTIONS",
    "training",
    "DiffusersUNet",
    "diffusers_model_spec",
    "diffusers_score_model",
    "LocalModel",
    "load_local_model",
]
