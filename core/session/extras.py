"""The window's smaller stages: try variants on a prompt, compare two feature settings, preview
calibration samples, read a running study's rows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..calibration import build, normalize_spec
from ..calibration.prompts import build_prompts
from ..calibration.sources import read_calibration_text
from ..datasets import flores_dir, load_pairs, read_flores
from ..errors import PolypruneError
from ..evaluation.translation import build_prompt, generate_greedy, select_demo_indices
from ..features import feature_magnitudes, overlap
from ..languages import language_name, resolve_language
from ..models import LoadedModel
from ..pipeline import FeatureRun, build_calibration
from ..progress import Progress, ensure
from ..recipe import DemoConfig, FeatureConfig, settings_from_dict
from ..study import StudyConfig, plan
from ..study.config import eval_config, eval_signature
from ..study.folder import finished_rows

from .variants import Session, Variant, labelled


# --------------------------------------------------------------------------------------------
# trying variants out
# --------------------------------------------------------------------------------------------
@dataclass
class TryResult:
    """Greedy outputs of several variants for one prompt.

    Attributes:
        prompt: the text given to the model.
        outputs: ``{variant id: generated text}``.
        source, reference: for a FLORES sentence, the sentence and its reference translation.
    """

    prompt: str
    outputs: dict[str, str]
    source: str | None = None
    reference: str | None = None


def flores_prompt(data: str | Path | None, src: str, tgt: str, index: int, shots: int = 4,
                  split: str = "devtest") -> tuple[str, str, str]:
    """The few-shot translation prompt of FLORES sentence ``index`` from ``src`` to ``tgt``, exactly
    as the ``flores_mt`` task builds it (:mod:`polyprune.evaluation.translation`: ``shots`` short
    ``dev`` pairs as demonstrations).

    Returns:
        ``(prompt, source sentence, reference translation)``.

    Raises:
        PolypruneError: no FLORES folder, unknown language, index out of range.
    """
    root = flores_dir(data)
    s, t = resolve_language(src), resolve_language(tgt)
    if s == t:
        raise PolypruneError(f"Translating {language_name(s)} into itself", "choose two different languages")
    dev_s, dev_t = read_flores(root, s, "dev"), read_flores(root, t, "dev")
    demos = [(dev_s[i], dev_t[i]) for i in select_demo_indices(dev_s, dev_t, shots)]
    sources, refs = read_flores(root, s, split), read_flores(root, t, split)
    if not 0 <= index < len(sources):
        raise PolypruneError(f"FLORES {split} has sentences 1 to {len(sources)}, not {index + 1}",
                             f"choose a sentence number from 1 to {len(sources)}")
    return build_prompt(demos, sources[index], language_name(s), language_name(t)), sources[index], refs[index]


def try_variants(session: Session, variants: Sequence[Variant], prompt: str | None = None, *,
                 flores: dict | None = None, max_new_tokens: int = 48, progress: Progress | None = None) -> TryResult:
    """Greedy continuations of one prompt by each variant, side by side.

    Args:
        prompt: free text (the output stops at the first newline only for FLORES prompts).
        flores: instead of ``prompt``: ``{"data": folder, "src": code, "tgt": code, "index": i}``
            (0-based sentence of ``devtest``; see :func:`flores_prompt`).
        max_new_tokens: at most this many new tokens per output.

    Raises:
        PolypruneError: an empty prompt, no variant, bad FLORES settings. Cancelled: through ``progress``.
    """
    progress = ensure(progress)
    source = reference = None
    stop = None
    if flores is not None:
        prompt, source, reference = flores_prompt(flores.get("data"), flores["src"], flores["tgt"],
                                                  int(flores.get("index", 0)), int(flores.get("shots", 4)))
        stop = "\n"
    if not prompt or not prompt.strip():
        raise PolypruneError("The prompt is empty", "type a prompt, or choose a FLORES sentence")
    if not variants:
        raise PolypruneError("No variant is chosen", "tick at least one variant to try")
    outputs = {}
    for k, v in enumerate(variants):
        sub = labelled(progress, k / len(variants), (k + 1) / len(variants), v.name)
        with session.holding(v):
            outputs[v.id] = generate_greedy(session.loaded.model, session.loaded.tokenizer, [prompt], batch_size=1,
                                            max_new_tokens=max_new_tokens, stop=stop, progress=sub)[0]
    progress.update(1, 1, "Done")
    return TryResult(prompt, outputs, source, reference)


# --------------------------------------------------------------------------------------------
# features
# --------------------------------------------------------------------------------------------
def compare_features(loaded: LoadedModel, first: FeatureRun, other_spec: dict, cfg: FeatureConfig,
                     batch_size: int = 8, progress: Progress | None = None) -> FeatureRun:
    """Measure a second calibration setting and compare it with ``first`` (already measured):
    the per-layer overlap of their top ``cfg.ratio`` dimensions (Kim et al. 2024, §4).

    Returns:
        A :class:`~polyprune.pipeline.FeatureRun` with ``first``'s result and the second setting in
        ``other``/``other_calibration``/``overlap``.

    Raises:
        PolypruneError: a bad spec. Cancelled: through ``progress``.
    """
    progress = ensure(progress)
    cal = build_calibration(loaded, other_spec, progress.sub(0, 0.05))
    other = feature_magnitudes(loaded.model, cal, batch_size=batch_size, progress=progress.sub(0.05, 1.0),
                               exclude_special=cfg.exclude_special, tokenizer=loaded.tokenizer)
    return FeatureRun(first.result, first.calibration, other, cal, overlap(first.result.magnitudes, other.magnitudes,
                                                                             ratio=cfg.ratio), cfg.ratio)


# --------------------------------------------------------------------------------------------
# calibration preview
# --------------------------------------------------------------------------------------------
@dataclass
class CalibrationPreview:
    """The first samples of a calibration setting as the model will read them.

    Attributes:
        texts: the first samples (strings).
        counts: tokens of every sample (``None`` without a tokenizer).
        cuts: for each shown sample, the character offset where ``seq_len`` cuts it (``None``: whole).
        samples: how many samples the setting has.
        available: sentence pairs the source has (pair sources only).
        seq_len: the calibration length in tokens.
    """

    texts: list[str]
    counts: list[int] | None
    cuts: list[int | None]
    samples: int
    available: int | None
    seq_len: int


def cut_offset(tokenizer, text: str, seq_len: int) -> int | None:
    """Character offset where ``text`` is cut at ``seq_len`` tokens (``None`` if it fits or the
    tokenizer has no offsets)."""
    try:
        enc = tokenizer(text, return_offsets_mapping=True)
    except (NotImplementedError, TypeError, ValueError):
        return None
    ids = enc["input_ids"]
    if len(ids) <= seq_len:
        return None
    ends = [e for s, e in enc["offset_mapping"][:seq_len] if e > 0]
    return max(ends) if ends else 0


def preview_calibration(spec: dict, tokenizer=None, shown: int = 3) -> CalibrationPreview:
    """The first ``shown`` samples of the calibration ``spec`` (:func:`polyprune.calibration.build`
    spec) and the token count of every sample. Pair sources and text files need no tokenizer;
    other kinds (mixes) are built with it.

    Raises:
        PolypruneError: what building the set would raise (too few pairs, unknown language, a
            missing file, ...); a mix without a tokenizer.
    """
    s = normalize_spec(spec)
    kind = s["kind"]
    available = None
    if kind == "demos":
        cfg = settings_from_dict(DemoConfig, {k: v for k, v in s.items() if k not in ("kind", "label")},
                                 "demonstration settings")
        pairs = load_pairs(cfg.source, cfg.src, cfg.tgt, cfg.split, cfg.src_column, cfg.tgt_column)
        available = len(pairs)
        eos = (tokenizer.eos_token or "") if tokenizer is not None else "<eos>"
        texts, _ = build_prompts(cfg, eos=eos, pairs=pairs)
    elif kind == "text":
        texts = read_calibration_text(s["file"], s["samples"])
    elif tokenizer is None:
        raise PolypruneError("A preview of this calibration set needs the model's tokenizer",
                             "load a model (Model panel) to see the preview")
    else:
        texts = build(spec, tokenizer).texts
    counts = cuts = None
    if tokenizer is not None:
        counts = [len(x) for x in tokenizer(texts)["input_ids"]]
        cuts = [cut_offset(tokenizer, t, s["seq_len"]) for t in texts[:shown]]
    return CalibrationPreview(texts[:shown], counts, cuts or [], len(texts), available, s["seq_len"])


# --------------------------------------------------------------------------------------------
# studies
# --------------------------------------------------------------------------------------------
def study_rows_so_far(cfg: StudyConfig) -> list[dict]:
    """The result rows of a study's cells finished so far (dense first, grid order), read from its
    folder while the study runs (the study's own tables are written when it stops).

    Raises:
        PolypruneError: invalid study settings.
    """
    out = Path(cfg.out).expanduser()
    if not out.is_dir():
        return []
    sig = eval_signature(eval_config(cfg.evaluation))
    rows = list(finished_rows(out, "dense", sig) or [])
    for cell in plan(cfg):
        rows += finished_rows(out, cell.id, sig) or []
    return rows
