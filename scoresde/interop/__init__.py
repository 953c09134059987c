"""Adapters for models trained elsewhere (diffusers; k-diffusion/EDM conventions).

- :mod:`scoresde.interop.training`: diffusers networks (``UNet2DModel``) as scoresde score
  networks — :class:`DiffusersUNet`, trained by :class:`~scoresde.training.Trainer`, saved and
  rebuilt through a ``"diffusers_unet"`` model spec (:func:`diffusers_model_spec`,
  :func:`diffusers_score_model`); :func:`load_local_model` reads a scoresde checkpoint or a
  diffusers ``save_pretrained`` folder for ``scoresde sample --model`` / ``compare --model``.

diffusers is an optional dependency (``pip install scoresde[diffusers]``), imported only when a
diffusers model is built or loaded.
"""

from . import training
from .training import DiffusersUNet, LocalModel, diffusers_model_spec, diffusers_score_model, load_local_model

__all__ = ["training", "DiffusersUNet", "diffusers_model_spec", "diffusers_score_model", "LocalModel",
           "load_local_model"]
