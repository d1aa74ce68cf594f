"""The bad-input catalogue: every command given bad, hostile or faulty input.

Each case runs one command in a small world (a tiny model folder, data, a user's own folder, an
earlier Polyprune export) and asserts the exit status (2: a clear error, no traceback; 0: handled),
a message that names the problem and the fix, and that nothing was modified: every file of the
world has the checksum it had before (new files only where the case expects them).
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch

from conftest import make_tokenizer, save_tiny
from polyprune.cli import main
from polyprune.fileio import write_marker

SECRET = "SECRET-TOKEN-d41d8cd98f00b204e9800998ecf8427e"


# --------------------------------------------------------------------------------------------
# the world
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    model = save_tiny(root, "llama")
    model.rename(root / "model")
    save_tiny(root, "gpt2").rename(root / "other-model")
    (root / "Documents").mkdir()
    (root / "Documents" / "thesis.txt").write_text("my thesis, years of work\n")
    (root / "Documents" / "notes.json").write_text('{"mine": true}\n')
    earlier = root / "earlier-export"
    earlier.mkdir()
    (earlier / "config.json").write_text("{}")
    write_marker(earlier, "export")
    (root / "calib.txt").write_text("\n".join(f"sample {i}: bonjour le monde, habari dunia, hello world" for i in range(8)),
                                    encoding="utf-8")
    (root / "secret.txt").write_text("\n".join(f"{SECRET} line {i}" for i in range(8)), encoding="utf-8")
    (root / "empty.txt").write_text("  \n\n")
    (root / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 50)
    (root / "pairs-bad.tsv").write_text("a\tb\nx\ty\n", encoding="utf-8")
    data = root / "data"
    for split, n in (("dev", 12), ("devtest", 6)):
        d = data / "flores200" / split
        d.mkdir(parents=True)
        for code, word in (("eng_Latn", "Sentence"), ("fra_Latn", "Phrase")):
            (d / f"{code}.{split}").write_text("".join(f"{word} number {i} is here.\n" for i in range(n)), encoding="utf-8")
    (data / "xnli").mkdir()
    (data / "xnli" / "test.en.jsonl").write_text(
        "".join(json.dumps({"premise": f"P {i}.", "hypothesis": f"H {i}.", "label": i % 3}) + "\n" for i in range(4)))
    return root


@pytest.fixture
def world(template, tmp_path) -> Path:
    w = tmp_path / "w"
    shutil.copytree(template, w, symlinks=True)
    return w


def checksums(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# --------------------------------------------------------------------------------------------
# cases
# --------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One bad input: ``argv(world) -> list`` (or ``setup(world)`` returning it), the exit status,
    a regular expression the message must match, and which new paths may appear."""

    id: str
    argv: Callable[[Path], list[str]]
    needle: str
    rc: int = 2
    new: tuple[str, ...] = ()
    setup: Callable[[Path], None] | None = None
    check: Callable[[Path, str], None] | None = None
    outcome: str = "clear error"
    env: dict = field(default_factory=dict)
    gone: tuple[str, ...] = ()  # paths that may disappear (stale temporaries Polyprune cleans up)


def prune(*extra: str, out: str = "out") -> Callable[[Path], list[str]]:
    return lambda w: ["prune", "--model", str(w / "model"), "--shots", "1", "--samples", "4", "--seq-len", "16",
                      "--out", str(w / out) if not out.startswith("/") else out, *[x.format(w=w) for x in extra]]


def cmd(*args: str) -> Callable[[Path], list[str]]:
    return lambda w: [x.format(w=w) for x in args]


def write(rel: str, text: str) -> Callable[[Path], None]:
    def f(w: Path) -> None:
        (w / rel).parent.mkdir(parents=True, exist_ok=True)
        (w / rel).write_text(text.format(w=w), encoding="utf-8")
    return f


def damage_weights(w: Path) -> None:
    p = w / "model" / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def nan_weights(w: Path) -> None:
    from safetensors.torch import load_file, save_file
    p = w / "model" / "model.safetensors"
    t = load_file(str(p))
    k = next(k for k in t if k.endswith("q_proj.weight"))
    t[k][0, 0] = float("nan")
    save_file(t, str(p), metadata={"format": "pt"})


def damage_tokenizer(w: Path) -> None:
    (w / "model" / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": [', encoding="utf-8")


def masks_file(w: Path, mutate=None) -> Path:
    """A real mask set of the world's model (written by a magnitude pruning), then ``mutate``d."""
    from polyprune.masks import save_masks
    from polyprune.models import load_model
    from polyprune.pruning import prune as prune_model
    from polyprune.recipe import PruneConfig
    lm = load_model(str(w / "model"))
    res = prune_model(lm.model, PruneConfig(method="magnitude", sparsity=0.5))
    p = w / "masks.safetensors"
    save_masks(res, p, lm.model)
    if mutate:
        mutate(p)
    return p


def truncate_mask(p: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(p), framework="pt") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    k = next(iter(t))
    t[k] = t[k][: t[k].numel() // 2].clone()
    save_file(t, str(p), metadata=meta)


def hostile_mask(p: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(p), framework="pt") as f:
        meta, t = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    shapes = json.loads(meta["shapes"])
    shapes[next(iter(shapes))] = [200000, 200000]  # would unpack to 37 GiB
    meta["shapes"] = json.dumps(shapes)
    save_file(t, str(p), metadata=meta)


def bert(w: Path) -> None:
    import transformers as tf
    cfg = tf.BertConfig(vocab_size=259, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, is_decoder=False)
    tf.BertForMaskedLM(cfg).save_pretrained(w / "bert")
    make_tokenizer().save_pretrained(w / "bert")


def planted_partial(w: Path) -> None:
    d = w / ".out.partial-x1y2z3"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"half" * 100)
    write_marker(d, "export", complete=False)


def no_secret(w: Path, err: str) -> None:
    for p in (w / "out").rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


def stale_removed(w: Path, err: str) -> None:
    assert not (w / ".out.partial-x1y2z3").exists() and (w / "out" / "config.json").exists()
    assert "interrupted earlier run" in err


def strict_json(w: Path, err: str) -> None:
    text = (w / "out" / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text)


RECIPE_MIN = "model: {w}/model\ndemos: {{shots: 1, samples: 4, seq_len: 16}}\npruning: {{method: magnitude}}\n"

CASES = [
    # --- prune: the model -----------------------------------------------------------------
    Case("model-missing", cmd("prune", "--model", "{w}/nope", "--out", "{w}/out"), "does not exist"),
    Case("model-folder-without-config", cmd("prune", "--model", "{w}/Documents", "--out", "{w}/out"), "has no config.json"),
    Case("model-is-a-text-file", cmd("prune", "--model", "{w}/calib.txt", "--out", "{w}/out"), "not a .gguf"),
    Case("model-relative-missing", cmd("prune", "--model", "Documents/nope", "--out", "{w}/out"), "does not exist"),
    Case("model-damaged-weights", prune(), "damaged|incomplete", setup=damage_weights),
    Case("model-nan-weights", prune(), "NaN", setup=nan_weights),
    Case("model-damaged-tokenizer", prune(), "tokenizer", setup=damage_tokenizer),
    Case("model-damaged-gguf", cmd("prune", "--model", "{w}/broken.gguf", "--out", "{w}/out"), "GGUF",
         setup=write("broken.gguf", "GGUF not really")),
    Case("model-encoder-bert", cmd("prune", "--model", "{w}/bert", "--out", "{w}/out"), "causal", setup=bert,
         new=("bert",)),
    Case("model-device-cuda-missing", prune("--device", "cuda"), "CUDA") if not torch.cuda.is_available() else None,
    # --- prune: settings ------------------------------------------------------------------
    Case("sparsity-1.0", prune("--sparsity", "1.0"), r"outside \[0, 1\)"),
    Case("sparsity-negative", prune("--sparsity", "-0.1"), r"outside \[0, 1\)"),
    Case("sparsity-nan", prune("--sparsity", "nan"), r"outside \[0, 1\)"),
    Case("pattern-unknown", prune("--pattern", "3:2"), "Unknown sparsity pattern"),
    Case("pattern-sparsity-mismatch", prune("--pattern", "2:4", "--sparsity", "0.3"), "2/4"),
    Case("owl-with-nm", prune("--layerwise", "owl", "--pattern", "2:4"), "OWL"),
    Case("damping-negative", prune("--method", "sparsegpt", "--damping", "-1"), "damping"),
    Case("batch-size-zero", prune("--batch-size", "0"), "not a positive number"),
    Case("skip-everything", prune("--skip", "*"), "nothing would be pruned"),
    Case("skip-block-missing", prune("--skip-blocks", "99"), "no block 99"),
    Case("skip-every-block", prune("--skip-blocks", "0-1"), "Every block is skipped"),
    Case("skip-block-not-a-number", prune("--skip-blocks", "first"), "not a block number"),
    # --- prune: calibration data ------------------------------------------------------------
    Case("seq-len-too-short", prune("--seq-len", "4"), "under 8"),
    Case("seq-len-longer-than-context", prune("--seq-len", "5000"), "longer than the model's context of 256"),
    Case("samples-zero", prune("--samples", "0"), "at least 1"),
    Case("samples-more-than-pairs", prune("--samples", "50"), "has 36"),
    Case("language-misspelt", prune("--src", "fra_Latx"), "fra_Latx"),
    Case("demos-flores-missing", prune("--demos", "flores:{w}/nowhere"), "does not exist"),
    Case("demos-file-is-a-folder", prune("--demos", "file:{w}/Documents"), "is a folder"),
    Case("demos-file-missing", prune("--demos", "file:{w}/pairs.tsv"), "does not exist"),
    Case("demos-file-no-columns", prune("--demos", "file:{w}/pairs-bad.tsv"), "no columns"),
    Case("calibration-text-missing", prune("--calibration-text", "{w}/none.txt"), "does not exist"),
    Case("calibration-text-empty", prune("--calibration-text", "{w}/empty.txt"), "no non-empty lines"),
    Case("calibration-text-binary", prune("--calibration-text", "{w}/binary.txt"), "not UTF-8"),
    Case("calibration-text-is-a-folder", prune("--calibration-text", "{w}/Documents"), "is a folder"),
    Case("refined-without-contrast", prune("--method", "wanda_refined"), "contrast"),
    Case("refined-contrast-missing", prune("--method", "wanda_refined", "--contrast-text", "{w}/none.txt"),
         "does not exist"),
    # --- prune: where it writes -------------------------------------------------------------
    Case("out-is-the-model", prune(out="model"), "source"),
    Case("out-inside-the-model", prune(out="model/pruned"), "source"),
    Case("out-contains-the-model", lambda w: prune()(w)[:-2] + ["--out", str(w)], "source"),
    Case("out-user-folder", prune(out="Documents"), "not written by Polyprune"),
    Case("out-user-folder-overwrite", prune("--overwrite", out="Documents"), "not written by Polyprune"),
    Case("out-earlier-export-without-overwrite", prune(out="earlier-export"), "already exists"),
    Case("out-is-a-file", prune(out="calib.txt"), "existing file"),
    Case("no-export-into-the-model", prune("--no-export", out="model"), "source"),
    # --- prune: evaluation settings ---------------------------------------------------------
    Case("eval-data-missing", prune("--eval-ppl", "eng_Latn", "--data", "{w}/nodata"), "No evaluation data folder"),
    Case("eval-language-unknown", prune("--eval-ppl", "xyz_Latn", "--data", "{w}/data"), "xyz_Latn"),
    Case("eval-language-without-file", prune("--eval-ppl", "swh_Latn", "--data", "{w}/data"), "No FLORES-200 file"),
    Case("eval-xnli-language-without-task", prune("--eval-xnli", "ja", "--data", "{w}/data"), "xnli has no language"),
    Case("eval-xnli-file-missing", prune("--eval-xnli", "fr", "--data", "{w}/data"), "No xnli data"),
    Case("ppl-limit-negative", prune("--ppl-limit", "-3"), "not a positive number"),
    Case("limit-zero", prune("--limit", "0"), "not a positive number"),
    # --- inspect ------------------------------------------------------------------------------
    Case("inspect-into-the-model", cmd("inspect", "--model", "{w}/model", "--shots", "1", "--samples", "4",
                                       "--seq-len", "16", "--out", "{w}/model/features"), "source"),
    Case("inspect-over-user-folder", cmd("inspect", "--model", "{w}/model", "--shots", "1", "--samples", "4",
                                         "--seq-len", "16", "--out", "{w}/Documents", "--overwrite"),
         "not written by Polyprune"),
    Case("inspect-compare-unknown", cmd("inspect", "--model", "{w}/model", "--shots", "1", "--samples", "4",
                                        "--seq-len", "16", "--compare-src", "klingon", "--out", "{w}/f"), "klingon"),
    # --- evaluate ----------------------------------------------------------------------------
    Case("evaluate-nothing", cmd("evaluate", "--model", "{w}/model", "--data", "{w}/data"), "Nothing to evaluate"),
    Case("evaluate-unknown-task", cmd("evaluate", "--model", "{w}/model", "--tasks", "sentiment", "--languages", "en",
                                      "--data", "{w}/data"), "Unknown task"),
    Case("evaluate-renamed-metric", cmd("evaluate", "--model", "{w}/model", "--tasks", "xnli", "--languages", "en",
                                        "--metrics", "acc_norm_chars", "--data", "{w}/data"), "now called 'acc_norm'"),
    Case("evaluate-unknown-metric", cmd("evaluate", "--model", "{w}/model", "--tasks", "xnli", "--languages", "en",
                                        "--metrics", "f1", "--data", "{w}/data"), "Unknown metric"),
    Case("evaluate-data-missing", cmd("evaluate", "--model", "{w}/model", "--tasks", "xnli", "--languages", "en",
                                      "--data", "{w}/nodata"), "No evaluation data folder"),
    Case("evaluate-file-missing", cmd("evaluate", "--model", "{w}/model", "--tasks", "pawsx", "--languages", "en",
                                      "--data", "{w}/data"), "No pawsx data"),
    Case("evaluate-out-into-model-config", cmd("evaluate", "--model", "{w}/model", "--tasks", "xnli", "--languages",
                                               "en", "--data", "{w}/data", "--out", "{w}/model/config.json"), "source"),
    Case("evaluate-out-over-user-file", cmd("evaluate", "--model", "{w}/model", "--tasks", "xnli", "--languages",
                                            "en", "--data", "{w}/data", "--out", "{w}/Documents/notes.json",
                                            "--overwrite"), "not written by Polyprune"),
    Case("evaluate-custom-spec-missing", cmd("evaluate", "--model", "{w}/model", "--tasks", "{w}/task.json",
                                             "--languages", "en", "--data", "{w}/data"), "does not exist"),
    # --- export ------------------------------------------------------------------------------
    Case("export-masks-missing", cmd("export", "--model", "{w}/model", "--masks", "{w}/none.safetensors",
                                     "--out", "{w}/out"), "does not exist"),
    Case("export-masks-not-safetensors", cmd("export", "--model", "{w}/model", "--masks", "{w}/calib.txt",
                                             "--out", "{w}/out"), "not a readable safetensors"),
    Case("export-masks-truncated", cmd("export", "--model", "{w}/model", "--masks", "{w}/masks.safetensors",
                                       "--out", "{w}/out"), "damaged", setup=lambda w: masks_file(w, truncate_mask),
         new=("masks.safetensors",)),
    Case("export-masks-hostile-header", cmd("export", "--model", "{w}/model", "--masks", "{w}/masks.safetensors",
                                            "--out", "{w}/out"), "damaged", setup=lambda w: masks_file(w, hostile_mask),
         new=("masks.safetensors",)),
    Case("export-masks-other-model", cmd("export", "--model", "{w}/other-model", "--masks", "{w}/masks.safetensors",
                                         "--out", "{w}/out"), "does not have|made for", setup=lambda w: masks_file(w),
         new=("masks.safetensors",)),
    Case("export-over-source", cmd("export", "--model", "{w}/model", "--out", "{w}/model", "--overwrite"), "source"),
    Case("export-over-user-folder", cmd("export", "--model", "{w}/model", "--out", "{w}/Documents", "--overwrite"),
         "not written by Polyprune"),
    # --- run (recipes are data, not consent) -------------------------------------------------
    Case("recipe-missing", cmd("run", "{w}/none.yaml"), "does not exist"),
    Case("recipe-is-a-folder", cmd("run", "{w}/Documents"), "is a folder"),
    Case("recipe-bad-yaml", cmd("run", "{w}/r.yaml"), "Could not parse", setup=write("r.yaml", "model: [demo\n")),
    Case("recipe-unknown-key", cmd("run", "{w}/r.yaml"), "Unknown setting 'modle'", setup=write("r.yaml", "modle: demo\n")),
    Case("recipe-wrong-type", cmd("run", "{w}/r.yaml"), "sparsity.*not a number",
         setup=write("r.yaml", "pruning: {{sparsity: half}}\n")),
    Case("recipe-string-for-list", cmd("run", "{w}/r.yaml"), "ppl.*list",
         setup=write("r.yaml", "evaluation: {{ppl: eng_Latn}}\n")),
    Case("recipe-old-metric-name", cmd("run", "{w}/r.yaml"), "now called 'acc_norm'",
         setup=write("r.yaml", "evaluation: {{metrics: [acc, acc_norm_chars]}}\n")),
    Case("recipe-negative-limit", cmd("run", "{w}/r.yaml"), "ppl limit -3",
         setup=write("r.yaml", "evaluation: {{ppl_limit: -3}}\n")),
    Case("recipe-out-points-at-user-folder", cmd("run", "{w}/sub/r.yaml"), r"Documents already exists; writing to .*Documents-2",
         rc=0, setup=write("sub/r.yaml", RECIPE_MIN + "out: ../Documents\noverwrite: true\n"), new=("Documents-2",),
         outcome="handled"),
    Case("recipe-out-user-folder-overwrite-flag", cmd("run", "{w}/sub/r.yaml", "--overwrite"), "not written by Polyprune",
         setup=write("sub/r.yaml", RECIPE_MIN + "out: ../Documents\n")),
    Case("recipe-trust-remote-code", cmd("run", "{w}/r.yaml", "--out", "{w}/out"), "cannot switch it on", rc=0,
         setup=write("r.yaml", RECIPE_MIN + "trust_remote_code: true\n"), new=("r.yaml", "out"), outcome="handled"),
    Case("recipe-secret-calibration-text", cmd("run", "{w}/r.yaml", "--out", "{w}/out"), "Wrote", rc=0,
         setup=write("r.yaml", RECIPE_MIN.replace("magnitude", "wanda") + "calibration_text: secret.txt\n"),
         new=("r.yaml", "out"), check=no_secret, outcome="handled"),
    # --- study --------------------------------------------------------------------------------
    Case("study-missing", cmd("study", "{w}/none.yaml"), "does not exist"),
    Case("study-unknown-key", cmd("study", "{w}/s.yaml"), "Unknown setting", setup=write("s.yaml", "modle: demo\n")),
    Case("study-bad-sparsity", cmd("study", "{w}/s.yaml"), r"outside \[0, 1\)",
         setup=write("s.yaml", "calibration: [{{kind: monolingual, lang: eng_Latn}}]\nsparsities: [1.5]\n")),
    Case("study-unknown-language", cmd("study", "{w}/s.yaml"), "xyz_Latn",
         setup=write("s.yaml", "calibration: [{{kind: monolingual, lang: xyz_Latn}}]\n")),
    Case("study-missing-eval-file", cmd("study", "{w}/s.yaml", "--out", "{w}/st"), "No FLORES-200 file",
         setup=write("s.yaml", "model: {w}/model\ncalibration: [{{kind: monolingual, lang: eng_Latn, source: builtin, "
                               "samples: 2, seq_len: 16, shots: 1}}]\nevaluation: {{ppl: [swh_Latn], data: {w}/data}}\n"),
         new=("s.yaml",)),
    Case("study-show-empty-folder", cmd("study", "{w}/Documents", "--show"), "No study results"),
    # --- demo and gui -------------------------------------------------------------------------
    Case("demo-over-user-folder", cmd("demo", "--out", "{w}/Documents", "--overwrite"), "not written by Polyprune"),
    Case("gui-without-display", cmd("gui"), "No display", env={"QT_QPA_PLATFORM": None, "DISPLAY": None,
                                                             "WAYLAND_DISPLAY": None}),
    # --- faults: interrupted runs, full disks, permissions, resources -------------------------
    Case("stale-partial-export-cleaned", prune("--method", "magnitude"), "Wrote", rc=0, setup=planted_partial,
         new=("out",), check=stale_removed, outcome="handled", gone=(".out.partial-x1y2z3",)),
    Case("report-is-strict-json", prune("--method", "magnitude"), "Wrote", rc=0, new=("out",), check=strict_json,
         outcome="handled"),
    Case("huge-calibration-line", prune("--calibration-text", "{w}/huge.txt"), "Wrote", rc=0,
         setup=write("huge.txt", ("mot " * 2_500_000 + "\n") * 4), new=("huge.txt", "out"), outcome="handled"),
]
CASES = [c for c in CASES if c is not None]


def run_case(world: Path, case: Case, capsys, monkeypatch) -> str:
    for k, v in case.env.items():
        if v is None:
            monkeypatch.delenv(k, raising=False)
        else:
            monkeypatch.setenv(k, v)
    if case.setup is not None:
        case.setup(world)
    before = checksums(world)
    monkeypatch.chdir(world)
    rc = main(case.argv(world))
    err = capsys.readouterr().err
    assert rc == case.rc, err
    assert __import__("re").search(case.needle, err), err
    if case.rc == 2:
        assert "fix:" in err and "Traceback" not in err, err
    after = checksums(world)
    changed = [k for k in before if before[k] != after.get(k) and not any(k.startswith(g + "/") for g in case.gone)]
    assert not changed, f"modified: {changed}"
    added = [k for k in after if k not in before and not any(k == n or k.startswith(n + "/") for n in case.new)]
    assert not added, f"written: {added}"
    if case.check is not None:
        case.check(world, err)
    return err


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(world, case, capsys, monkeypatch):
    err = run_case(world, case, capsys, monkeypatch)
    report = __import__("os").environ.get("POLYPRUNE_CATALOGUE_REPORT")
    if report:  # the catalogue as a table (case, outcome, exit status, message) for a closing note
        lines = [ln.strip() for ln in err.splitlines() if ln.strip().startswith(("polyprune: error:", "fix:"))]
        msg = " / ".join(lines) if lines else (err.strip().splitlines() or [""])[-1].strip()
        with open(report, "a", encoding="utf-8") as f:
            f.write(f"{case.id}\t{case.outcome}\t{case.rc}\t{msg}\n")


def test_catalogue_size():
    assert len(CASES) >= 60
    assert {c.outcome for c in CASES} <= {"clear error", "handled"}


# --------------------------------------------------------------------------------------------
# faults that need a hand inside the process
# --------------------------------------------------------------------------------------------
def test_full_disk_during_export_leaves_nothing(world, capsys, monkeypatch):
    import polyprune.export as ex

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ex, "save_masks", full)
    before = checksums(world)
    rc = main(prune("--method", "magnitude")(world))
    err = capsys.readouterr().err
    assert rc == 2 and "disk is full" in err and "fix:" in err
    assert checksums(world) == before
    assert not [p for p in world.iterdir() if p.name.startswith(".out")]


def test_unwritable_target_folder(world, capsys, monkeypatch):
    import tempfile as tf

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(tf, "mkdtemp", denied)
    before = checksums(world)
    rc = main(prune("--method", "magnitude")(world))
    err = capsys.readouterr().err
    assert rc == 2 and "No permission" in err and "choose a folder you can write to" in err
    assert checksums(world) == before


def test_calibration_cache_that_cannot_fit_is_refused(world, capsys, monkeypatch):
    import polyprune.pipeline as pl

    class Tiny:
        available = 1024
    monkeypatch.setattr(pl.psutil, "virtual_memory", lambda: Tiny())
    before = checksums(world)
    rc = main(prune()(world))
    err = capsys.readouterr().err
    assert rc == 2 and "GiB of memory is free" in err and "--samples" in err
    assert checksums(world) == before


def test_planted_symlink_is_not_followed(world, capsys):
    victim = world / "Documents" / "thesis.txt"
    out = world / "runs"
    out.mkdir()
    (out / ".results.json.tmp").symlink_to(victim)  # a fixed temporary name, planted
    rc = main(["evaluate", "--model", str(world / "model"), "--tasks", "xnli", "--languages", "en",
               "--data", str(world / "data"), "--bootstrap", "0", "--out", str(out / "results.json")])
    assert rc == 0, capsys.readouterr().err
    assert victim.read_text() == "my thesis, years of work\n"
    assert json.loads((out / "results.json").read_text())["results"][0]["task"] == "xnli"


def test_damaged_study_cell_runs_again(world, capsys):
    study = world / "s.yaml"
    study.write_text(f"model: {world / 'model'}\ncalibration: [{{kind: monolingual, lang: eng_Latn, source: builtin, "
                     "samples: 2, seq_len: 16, shots: 1}]\nmethods: [wanda]\n"
                     f"evaluation: {{ppl: [eng_Latn], data: {world / 'data'}, bootstrap: 10}}\nout: {world / 'st'}\n")
    assert main(["study", str(study)]) == 0
    first = json.loads((world / "st" / "results.jsonl").read_text().splitlines()[-1])
    cell = next(p for p in (world / "st" / "cells").iterdir() if p.name != "dense")
    (cell / "masks.safetensors").write_bytes(b"damaged")
    capsys.readouterr()
    assert main(["study", str(study)]) == 0
    err = capsys.readouterr().err
    assert "damaged" in err and "runs again" in err
    again = json.loads((world / "st" / "results.jsonl").read_text().splitlines()[-1])
    assert math.isclose(again["value"], first["value"]) and (cell / "masks.safetensors").stat().st_size > 100
