"""Language subspaces of a model: measure them, read them, save and reload them.

:func:`compute_subspaces` is the stage function (one call does everything a GUI button or the
``polyprune subspaces`` command needs): it reads the first N sentences of every language,
extracts last-token representations after every block (:mod:`.represent`), averages them per
language and decomposes the means (:mod:`.decompose`). The result, :class:`Subspaces`, also keeps
every sentence's coordinates in the specific subspace, so plots can be drawn again from a saved
file without the model.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from polyprune.datasets import language_texts, resolve_source, tokenize_texts
from polyprune.errors import PolypruneError
from polyprune.fileio import atomic_write_bytes, atomic_write_text, dumps, write_json
from polyprune.languages import language_name
from polyprune.progress import Progress, ensure

from .config import SubspacesConfig
from .decompose import decompose, projector
from .represent import last_token_states

FILE_NAME = "subspaces.npz"
FORMAT = 1


@dataclass
class Subspaces:
    """Language means, the language-agnostic vector and the language-specific subspace per block.

    Attributes:
        languages: the K FLORES-200 codes, in column order.
        central: the language directions are measured from.
        means: ``[n_blocks, K, d]`` float64: mean last-token representation of each language.
        agnostic: ``[n_blocks, d]`` float64: the agnostic vector ``a`` (scaled by ``1/||a||^2``).
        specific: ``[n_blocks, K - 1, d]`` float64: orthonormal basis rows of the specific subspace.
        settings: the :class:`SubspacesConfig` as a dict, plus model facts.
        sentences: the ``S = K x N`` sentences, language by language.
        sentence_language: ``[S]`` index into ``languages`` of each sentence.
        specific_coords: ``[n_blocks, S, K - 1]`` each sentence's coordinates ``h B^T``.
        agnostic_coords: ``[n_blocks, S]`` each sentence's component along ``a / ||a||``.
        total_variance: ``[n_blocks]`` mean squared distance of the sentences to their overall mean.
        within_variance: ``[n_blocks]`` mean squared distance of each sentence to its language's mean.
    """

    languages: list[str]
    central: str
    means: np.ndarray
    agnostic: np.ndarray
    specific: np.ndarray
    settings: dict = field(default_factory=dict)
    sentences: list[str] = field(default_factory=list)
    sentence_language: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    specific_coords: np.ndarray | None = None
    agnostic_coords: np.ndarray | None = None
    total_variance: np.ndarray | None = None
    within_variance: np.ndarray | None = None

    # --- shape ---------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[2])

    def index(self, lang: str) -> int:
        """Column of a language (a FLORES code).

        Raises:
            PolypruneError: the language is not among these subspaces'.
        """
        if lang not in self.languages:
            raise PolypruneError(f"{lang} is not among the subspace languages ({', '.join(self.languages)})",
                                 f"measure subspaces that include {lang}")
        return self.languages.index(lang)

    # --- derived quantities ------------------------------------------------------------------
    def directions(self, central: str | None = None) -> np.ndarray:
        """``[n_blocks, K, d]``: each language's mean projection onto the specific subspace minus the
        central language's (Lens §3.2). The projection is linear, so the mean of the sentences'
        projections is the projection of the mean."""
        c = self.index(central or self.central)
        P = projector(self.specific)  # [n_blocks, d, d]
        diff = self.means - self.means[:, c:c + 1, :]
        return np.einsum("lkd,lde->lke", diff, P)

    def distances(self) -> np.ndarray:
        """``[n_blocks, K, K]``: distance between two languages' means inside the specific subspace,
        ``||(m_k - m_j) B^T||``, in units of the within-language spread ``sqrt(within_variance)``.

        (The differences of the means lie in the specific subspace, so this equals the plain
        distance between the means; dividing by the spread makes blocks comparable.)
        """
        coords = np.einsum("lkd,lrd->lkr", self.means, self.specific)
        d = np.linalg.norm(coords[:, :, None, :] - coords[:, None, :, :], axis=-1)
        spread = np.sqrt(np.maximum(self.within_variance, 1e-300)) if self.within_variance is not None else 1.0
        return d / np.reshape(spread, (-1, 1, 1))

    def specific_share(self) -> np.ndarray:
        """``[n_blocks]``: share of the sentences' variance (around their overall mean) that lies in
        the specific subspace: ``sum_i ||(h_i - c) B^T||^2 / sum_i ||h_i - c||^2``, in [0, 1]."""
        if self.specific_coords is None or self.total_variance is None:
            raise PolypruneError("These subspaces hold no sentence coordinates",
                                 "measure them again (polyprune subspaces) to get the per-sentence data")
        x = self.specific_coords
        v = ((x - x.mean(axis=1, keepdims=True)) ** 2).sum(-1).mean(-1)
        return v / np.maximum(self.total_variance, 1e-300)

    def direction_sizes(self) -> np.ndarray:
        """``[n_blocks, K]``: length of each language's direction in within-language spreads (the
        central language's row of :meth:`distances`)."""
        return self.distances()[:, :, self.index(self.central)]

    def summary_rows(self) -> list[dict]:
        """One row per block: specific share and every language's direction size (for CSV)."""
        share = self.specific_share() if self.specific_coords is not None else [None] * self.n_blocks
        sizes = self.direction_sizes()
        rows = []
        for l in range(self.n_blocks):
            row = {"block": l + 1, "specific_share": share[l], "agnostic_norm": float(np.linalg.norm(self.agnostic[l]))}
            row |= {f"direction_{lang}": float(sizes[l, k]) for k, lang in enumerate(self.languages)}
            rows.append(row)
        return rows

    # --- files ---------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        """The ``.npz`` file's bytes (arrays below; strings as unicode arrays, no pickles)."""
        arrays = {"languages": np.array(self.languages), "means": self.means, "agnostic": self.agnostic,
                  "specific": self.specific, "central": np.array(self.central),
                  "settings": np.array(dumps(self.settings)), "format": np.array(FORMAT),
                  "sentences": np.array(self.sentences if self.sentences else [], dtype=str),
                  "sentence_language": np.asarray(self.sentence_language, dtype=np.int64)}
        for name in ("specific_coords", "agnostic_coords", "total_variance", "within_variance"):
            v = getattr(self, name)
            if v is not None:
                arrays[name] = v
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write ``subspaces.npz`` atomically (a folder gets ``subspaces.npz`` inside it).

        Raises:
            PolypruneError: the file cannot be written.
        """
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / FILE_NAME
        return atomic_write_bytes(p, self.to_bytes())


def load_subspaces(path: str | Path) -> Subspaces:
    """Read a ``subspaces.npz`` written by :meth:`Subspaces.save` (a folder: the file inside it).

    Raises:
        PolypruneError: a missing or unreadable file, or one without the arrays of a subspace file.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / FILE_NAME
    if not p.is_file():
        raise PolypruneError(f"Subspace file {p} does not exist", "give a subspaces.npz written by polyprune subspaces")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise PolypruneError(f"Could not read {p}: {e}", "give a subspaces.npz written by polyprune subspaces") from e
    missing = [k for k in ("languages", "means", "agnostic", "specific") if k not in data]
    if missing:
        raise PolypruneError(f"{p} lacks the array(s) {', '.join(missing)}",
                             "give a subspaces.npz written by polyprune subspaces")
    langs = [str(x) for x in data["languages"].tolist()]
    settings = json.loads(str(data["settings"])) if "settings" in data else {}
    return Subspaces(languages=langs, central=str(data["central"]) if "central" in data else langs[0],
                     means=data["means"].astype(np.float64), agnostic=data["agnostic"].astype(np.float64),
                     specific=data["specific"].astype(np.float64), settings=settings,
                     sentences=[str(x) for x in data.get("sentences", np.array([])).tolist()],
                     sentence_language=data.get("sentence_language", np.zeros(0, dtype=np.int64)),
                     specific_coords=data.get("specific_coords"), agnostic_coords=data.get("agnostic_coords"),
                     total_variance=data.get("total_variance"), within_variance=data.get("within_variance"))


def save_folder(sub: Subspaces, folder: str | Path) -> list[str]:
    """Write ``subspaces.npz``, ``subspaces.json`` (settings and per-block summary), ``blocks.csv``
    (per block: specific share, agnostic norm, every language's direction size) and
    ``distances.csv`` (block, language_a, language_b, distance) into ``folder``; returns the names.

    Raises:
        PolypruneError: a file cannot be written.
    """
    folder = Path(folder)
    sub.save(folder / FILE_NAME)
    rows = sub.summary_rows()
    write_json(folder / "subspaces.json", {"settings": sub.settings, "languages": sub.languages,
                                           "central": sub.central, "blocks": rows}, kind="subspaces")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(folder / "blocks.csv", buf.getvalue())
    dist = sub.distances()
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["block", "language_a", "language_b", "distance"])
    for l in range(sub.n_blocks):
        for i, x in enumerate(sub.languages):
            for j, y in enumerate(sub.languages):
                w.writerow([l + 1, x, y, f"{dist[l, i, j]:.6g}"])
    atomic_write_text(folder / "distances.csv", buf.getvalue())
    return [FILE_NAME, "subspaces.json", "blocks.csv", "distances.csv"]


def read_texts(cfg: SubspacesConfig) -> dict[str, list[str]]:
    """The first ``cfg.samples`` sentences of every language (see :func:`polyprune.datasets.language_texts`).

    Raises:
        PolypruneError: a missing source or file, or fewer sentences than asked for.
    """
    return {lang: language_texts(cfg.texts, lang, cfg.samples, cfg.split) for lang in cfg.languages}


def compute_subspaces(loaded, cfg: SubspacesConfig, progress: Progress | None = None,
                      texts: dict[str, list[str]] | None = None) -> Subspaces:
    """Measure language subspaces of a model (Zhao et al. 2024, §3.1; methods.md §8).

    Args:
        loaded: a :class:`polyprune.models.LoadedModel` (its ``model`` and ``tokenizer`` are used).
        cfg: languages, sentence source, number, length, batch size.
        texts: ``{language: sentences}`` to use instead of reading ``cfg.texts`` (the first
            ``cfg.samples`` of each are used).

    Returns:
        :class:`Subspaces` with float64 means, agnostic vector and specific basis per block.

    Raises:
        PolypruneError: fewer than two languages, a central language not among them, fewer
            sentences than asked for, an unknown language or source.
        Cancelled: through ``progress``.
    """
    progress = ensure(progress)
    cfg = cfg.validate()
    model, tok = loaded.model, loaded.tokenizer
    progress.update(0, 1, "Reading sentences")
    try:
        source = resolve_source(cfg.texts)
    except PolypruneError:
        if texts is None:
            raise
        source = "given by the caller"
    if texts is None:
        texts = read_texts(cfg)
    sents: list[str] = []
    owner: list[int] = []
    for k, lang in enumerate(cfg.languages):
        got = [s for s in texts.get(lang, []) if s and s.strip()]
        if len(got) < cfg.samples:
            raise PolypruneError(f"There are {len(got)} {lang} sentences, but {cfg.samples} were asked for",
                                 f"ask for at most {len(got)} sentences (samples), or give more {language_name(lang)} text")
        sents += got[:cfg.samples]
        owner += [k] * cfg.samples
    ids = tokenize_texts(tok, sents, cfg.seq_len)
    states = last_token_states(model, ids, batch_size=cfg.batch_size, progress=progress.sub(0.02, 0.95))
    progress.update(0, 1, "Decomposing")
    owner_arr = np.asarray(owner, dtype=np.int64)
    n_blocks, S, d = states.shape
    K = len(cfg.languages)
    means = np.zeros((n_blocks, K, d))
    spec_coords = np.zeros((n_blocks, S, K - 1))
    agn_coords = np.zeros((n_blocks, S))
    total_var = np.zeros(n_blocks)
    within_var = np.zeros(n_blocks)
    for l in range(n_blocks):  # one block at a time in float64 keeps memory at one [S, d] copy
        h = states[l].double().numpy()
        for k in range(K):
            means[l, k] = h[owner_arr == k].mean(axis=0)
        total_var[l] = ((h - h.mean(axis=0)) ** 2).sum(-1).mean()
        within_var[l] = ((h - means[l, owner_arr]) ** 2).sum(-1).mean()
    agnostic, specific = decompose(means)
    for l in range(n_blocks):
        h = states[l].double().numpy()
        spec_coords[l] = h @ specific[l].T
        agn_coords[l] = h @ (agnostic[l] / np.linalg.norm(agnostic[l]))
    settings = cfg.to_dict() | {"texts_resolved": source,
                                "model": getattr(loaded, "spec", None), "n_blocks": n_blocks, "hidden_size": d,
                                "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                                "representation": "hidden_states[1:] at the last real token"}
    progress.update(1, 1, "Subspaces measured")
    return Subspaces(languages=list(cfg.languages), central=cfg.central, means=means, agnostic=agnostic,
                     specific=specific, settings=settings, sentences=sents, sentence_language=owner_arr,
                     specific_coords=spec_coords, agnostic_coords=agn_coords, total_variance=total_var,
                     within_variance=within_var)
