"""Language-specific attention heads (heads issue; methods.md §7): per-language head scores
(ablation and taylor), classification into specific/shared heads, the cross-effect matrix, and
soft or hard removal of the heads of languages a deployment does not need.

Public API: :class:`HeadsConfig`, :class:`RemovalConfig`, :func:`find_heads`, :func:`score_heads`,
:func:`remove_heads`, :func:`apply_removal`, :func:`save_results`, :func:`load_results`.
"""
from .config import HeadsConfig, RemovalConfig, format_heads_spec, parse_heads_spec
from .locate import HeadLayout, find_heads
from .results import HeadsResult, load_results, save_results
from .run import RemovalResult, apply_removal, hard_cut_option, remove_heads, score_heads

__all__ = ["HeadsConfig", "RemovalConfig", "parse_heads_spec", "format_heads_spec", "HeadLayout", "find_heads",
           "HeadsResult", "save_results", "load_results", "score_heads", "remove_heads", "apply_removal",
           "hard_cut_option", "RemovalResult"]
