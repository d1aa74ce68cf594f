"""Studies on a local Ray cluster: same results as the sequential run, resume, failures, bad addresses.

One local cluster (2 CPUs) serves the whole module; the tests skip with the reason when ``ray`` is
not installed (``pip install 'polyprune[cluster]'``).
"""
from __future__ import annotations

import json

import pytest
import torch

from polyprune import study as S
from polyprune.errors import Cancelled, PolypruneError
from polyprune.progress import Progress
from polyprune.study.ray import RayRunner, check_address, failed_cells, run_study_ray
from test_study import config, small_flores

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'polyprune[cluster]')")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


@pytest.fixture
def tiny_path(tmp_path):
    from conftest import save_tiny
    return save_tiny(tmp_path, "llama")


def study(tmp_path, path, out, **kw):
    data = small_flores(tmp_path) if not (tmp_path / "data").exists() else tmp_path / "data"
    kw = dict(methods=["wanda", "sparsegpt"], calibration=[{"kind": "monolingual", "lang": "eng_Latn"}],
              sparsities=[0.5, 0.25], out=str(tmp_path / out)) | kw
    cfg = config(tmp_path, path, data, **kw)
    cfg.ray.num_cpus = 1
    return cfg


def values(rows):
    return {(r["cell"], r["task"], r["language"], r["metric"]): (r["value"], r["ci_low"], r["ci_high"], r["n"],
                                                                    r["overall_sparsity"], r["delta"]) for r in rows}


def test_ray_study_equals_sequential_and_resumes(tmp_path, tiny_path, cluster):
    torch.set_num_threads(1)  # a worker uses num_cpus = 1 thread
    seq = S.run_study(study(tmp_path, tiny_path, "seq"), log=lambda m: None)
    cfg = study(tmp_path, tiny_path, "ray")

    # 1) interrupted after the first finished cell: the other tasks are cancelled
    prog = Progress()
    lines = []

    def log(m):
        lines.append(m)
        if m.startswith("Cell ") and "done" in m:
            prog.cancel()
    with pytest.raises(Cancelled):
        run_study_ray(cfg, progress=prog, log=log)
    out = tmp_path / "ray"
    finished = sorted(p.parent.name for p in (out / "cells").glob("*/results.json"))
    assert "dense" in finished and 2 <= len(finished) < 5
    stamps = {c: (out / "cells" / c / "results.json").stat().st_mtime_ns for c in finished}

    # 2) resume: only the unfinished cells run, the finished ones are not redone
    res = run_study_ray(cfg, log=lambda m: None)
    assert sorted(res.skipped) == sorted(c for c in finished if c != "dense")
    assert len(res.ran) == 4 - len(res.skipped)
    for c, t in stamps.items():
        assert (out / "cells" / c / "results.json").stat().st_mtime_ns == t

    # 3) the same rows as the sequential run (timings aside), and the same masks
    a = values(json.loads(x) for x in (tmp_path / "seq" / "results.jsonl").read_text().splitlines())
    b = values(json.loads(x) for x in (out / "results.jsonl").read_text().splitlines())
    assert a == b and len(a) == 2 + 4 * 2
    from polyprune.masks import load_masks
    for c in seq.cells:
        ma = load_masks(tmp_path / "seq" / "cells" / c.id / "masks.safetensors").masks
        mb = load_masks(out / "cells" / c.id / "masks.safetensors").masks
        assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert S.load_agreement(out) == S.load_agreement(tmp_path / "seq")


def test_failing_cell_is_recorded_and_the_others_go_on(tmp_path, tiny_path, cluster):
    # the second method names a block the model lacks: only the model, in the cell's task, can tell
    # (files and languages are checked for the whole study before anything runs)
    cfg = study(tmp_path, tiny_path, "fail", evaluation={}, sparsities=[0.5],
                methods=["wanda", {"method": "wanda", "skip_blocks": [5], "label": "skips block 5"}],
                calibration=[{"kind": "monolingual", "lang": "eng_Latn"}])
    res = run_study_ray(cfg, log=lambda m: None)
    assert len(res.ran) == 1
    failed = failed_cells(cfg.out, res.cells)
    assert list(failed) == [res.cells[1].id] and "no block 5" in failed[res.cells[1].id]
    assert not (tmp_path / "fail" / "cells" / res.cells[1].id / "results.json").exists()


def test_unreachable_address_is_reported_before_anything_runs(tmp_path, tiny_path):
    with pytest.raises(PolypruneError, match="does not answer") as e:
        RayRunner("127.0.0.1:9")
    assert "ray start --head" in e.value.fix
    with pytest.raises(PolypruneError, match="not host:port"):
        check_address("nonsense")
    cfg = study(tmp_path, tiny_path, "nowhere")
    with pytest.raises(PolypruneError, match="does not answer"):
        run_study_ray(cfg, address="127.0.0.1:9", log=lambda m: None)
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("kw,needle", [(dict(num_cpus=0), "num_cpus"), (dict(memory="lots"), "not a size"),
                                       (dict(max_retries=-1), "max_retries")])
def test_bad_ray_settings(kw, needle):
    cfg = S.StudyConfig.from_dict({"ray": kw})
    with pytest.raises(PolypruneError, match=needle):
        cfg.ray.validate()


def test_cli_study_ray(tmp_path, tiny_path, cluster, capsys):
    import yaml
    from polyprune.cli import main

    cfg = study(tmp_path, tiny_path, "cli", methods=["wanda"], sparsities=[0.5])
    f = tmp_path / "study.yaml"
    f.write_text(yaml.safe_dump(cfg.to_dict(), allow_unicode=True), encoding="utf-8")
    assert main(["study", str(f), "--ray", "127.0.0.1:9"]) == 2
    assert "does not answer" in capsys.readouterr().err and not (tmp_path / "cli").exists()
    assert main(["study", str(f), "--ray"]) == 0  # the module's local cluster
    assert len(S.load_rows(tmp_path / "cli")) == 2 + 2
