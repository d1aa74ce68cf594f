"""Language subspaces and Lens (Zhao et al. 2024, arXiv 2410.04407; methods.md §8).

* :func:`compute_subspaces` measures, per block, each language's mean last-token representation,
  the language-agnostic vector and the language-specific subspace (:class:`Subspaces`, saved as
  ``subspaces.npz``).
* :func:`apply_lens` fine-tunes only the top blocks so target languages move towards the central
  language in the agnostic direction and away from it in the specific subspace, reversibly
  (:meth:`LensResult.restore`); :func:`export_lens` writes the model as ``polyprune export`` does.

Only the settings are imported eagerly, so ``polyprune --help`` (which imports :mod:`.cli`) stays
fast; everything else is loaded on first use.
"""
from importlib import import_module

from .config import LensConfig, SubspacesConfig

_LAZY = {
    "decompose": ".decompose", "decompose_block": ".decompose", "projector": ".decompose",
    "last_token_states": ".represent",
    "FILE_NAME": ".space", "Subspaces": ".space", "compute_subspaces": ".space", "load_subspaces": ".space",
    "LensResult": ".lens", "apply_lens": ".lens", "export_lens": ".lens", "training_rows": ".lens",
}

__all__ = ["LensConfig", "SubspacesConfig", "decompose", "decompose_block", "projector", "last_token_states",
           "FILE_NAME", "Subspaces", "compute_subspaces", "load_subspaces", "LensResult", "apply_lens", "export_lens",
           "training_rows"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
