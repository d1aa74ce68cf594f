"""Language subspaces and Lens (Zhao et al. 2024, arXiv 2410.04407; methods.md §8).

* :func:`compute_subspaces` measures, per block, each language's mean last-token representation,
  the language-agnostic vector and the language-specific subspace (:class:`Subspaces`, saved as
  ``subspaces.npz``).
* :func:`apply_lens` fine-tunes only the top blocks so target languages move towards the central
  language in the agnostic direction and away from it in the specific subspace, reversibly
  (:class:`LensResult` ``.restore()``); :func:`export_lens` writes the model as ``polyprune export`` does.
"""
from .config import LensConfig, SubspacesConfig
from .decompose import decompose, decompose_block, projector
from .represent import last_token_states
from .space import FILE_NAME, Subspaces, compute_subspaces, load_subspaces

__all__ = ["LensConfig", "SubspacesConfig", "Subspaces", "compute_subspaces", "load_subspaces", "decompose",
           "decompose_block", "projector", "last_token_states", "FILE_NAME"]
