"""Export: ONNX and torch.export (.pt2) files that describe their own preprocessing, checked for parity
with PyTorch, scored by ``predict --onnx`` exactly like the PyTorch path; damaged files exit 2; files
exported before the dynamo-based exporter still read."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from research.cli import export_main, predict_main
from research.data.demo import write_demo_new_images
from research.inference.model_file import OnnxModel
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="module")
def check_images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("check") / "images"
    write_demo_new_images(folder, per_class=1, seed=5)
    return folder


@pytest.fixture(scope="module")
def exported(trained_run, check_images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    with pytest.raises(SystemExit) as e:
        export_main(["--run", str(trained_run), "--out", str(out), "--check-images", str(check_images), "--repeats", "3"])
    assert e.value.code == 0
    return out


def test_onnx_metadata_read_back(exported, trained_run):
    proto = onnx.load(str(exported))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["run_id"] == "trained" and props["checkpoint"].startswith("best (epoch ")
    assert json.loads(props["image_size"]) == 32 and json.loads(props["channels"]) == 1
    ckpt = torch.load(trained_run / "best.pt", map_location="cpu", weights_only=True)
    assert json.loads(props["mean"]) == pytest.approx(ckpt["mean"]) and json.loads(props["std"]) == pytest.approx(ckpt["std"])
    assert json.loads(props["class_names"]) == ckpt["class_names"]
    assert "longest side" in props["resize_rule"] and "pad" in props["resize_rule"]
    sidecar = json.loads(exported.with_name("model.json").read_text())
    assert {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in sidecar.items()} == props
    batch = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch"  # dynamic batch axis


def test_parity_json_and_card(exported, check_images):
    parity = json.loads(exported.with_name("parity.json").read_text())
    assert parity["ok"] is True and parity["images"] == 7 and parity["same_winners"] == 7
    assert parity["max_abs_diff"] <= 1e-5 and parity["tolerance"] == 1e-5 and parity["different_winners"] == []
    assert parity["latency_ms"]["torch"] > 0 and parity["latency_ms"]["exported"] > 0 and parity["latency_ms"]["batch"] == 1
    assert parity["images_from"] == str(check_images)
    card = exported.with_name("model_card.md").read_text()
    assert "## Export" in card and "same winner on 7 of 7" in card and "**passed**" in card


def test_dynamic_batch_gives_the_same_logits_per_image(exported):
    model = OnnxModel(exported)
    x = torch.randn(5, 1, 32, 32)
    together = model(x)
    one_by_one = torch.cat([model(x[i : i + 1]) for i in range(5)])
    assert together.shape == (5, 7)
    torch.testing.assert_close(together, one_by_one, rtol=1e-5, atol=1e-5)


def test_predict_onnx_equals_pytorch(exported, trained_run, check_images, tmp_path):
    for argv in (
        ["--onnx", str(exported), str(check_images), "--out", str(tmp_path / "onnx")],
        ["--run", str(trained_run), str(check_images), "--out", str(tmp_path / "torch"), "--wandb", "disabled"],
    ):
        with pytest.raises(SystemExit) as e:
            predict_main(argv)
        assert e.value.code == 0
    for mode in ("raw", "haar"):
        onnx_records = json.loads((tmp_path / "onnx" / mode / "predictions.json").read_text())
        torch_records = json.loads((tmp_path / "torch" / mode / "predictions.json").read_text())
        assert [r["image"] for r in onnx_records] == [r["image"] for r in torch_records] and len(onnx_records) == 7
        for a, b in zip(onnx_records, torch_records, strict=True):
            assert a["winner"] == b["winner"] and a["box"] == b["box"]
            assert max(abs(a["scores"][c] - b["scores"][c]) for c in a["scores"]) <= 1e-5
            assert (tmp_path / "onnx" / mode / a["panel"]).stat().st_size > 1000
        assert (tmp_path / "onnx" / mode / "sheet.png").is_file()
    onnx_cmp = json.loads((tmp_path / "onnx" / "comparison.json").read_text())
    torch_cmp = json.loads((tmp_path / "torch" / "comparison.json").read_text())
    for mode, stats in torch_cmp["modes"].items():
        assert onnx_cmp["modes"][mode]["mean_confidence"] == pytest.approx(stats.pop("mean_confidence"), abs=1e-4)
        assert {k: v for k, v in onnx_cmp["modes"][mode].items() if k != "mean_confidence"} == stats


def test_pt2_export_carries_the_metadata_and_gives_pytorchs_probabilities(trained_run, check_images, tmp_path):
    out = tmp_path / "pt2" / "model.pt2"
    with pytest.raises(SystemExit) as e:
        export_main(["--run", str(trained_run), "--format", "pt2", "--out", str(out),
                     "--check-images", str(check_images), "--repeats", "2"])
    assert e.value.code == 0
    extra = {"model.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    meta = json.loads(extra["model.json"])
    assert meta["export_format"] == "pt2" and meta["image_size"] == 32 and meta["run_id"] == "trained"
    parity = json.loads(out.with_name("parity.json").read_text())
    assert parity["ok"] and parity["max_abs_diff"] <= 1e-5 and parity["same_winners"] == parity["images"] == 7
    assert program.module()(torch.randn(3, 1, 32, 32)).shape == (3, 7)  # the batch axis is dynamic


def test_the_exporters_emit_no_deprecation_warning(trained_run, check_images, tmp_path):
    """The TorchScript-based exporters warn that they are deprecated; the dynamo-based ones used now do not."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for fmt in ("onnx", "pt2"):
            with pytest.raises(SystemExit) as e:
                export_main(["--run", str(trained_run), "--format", fmt, "--out", str(tmp_path / fmt / f"model.{fmt}"),
                             "--check-images", str(check_images), "--repeats", "1"])
            assert e.value.code == 0
    deprecations = [w for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning)) and "torch" in w.filename]
    assert not deprecations, [str(w.message) for w in deprecations]


def test_a_file_exported_before_still_reads(check_images, tmp_path):
    """``predict --onnx`` reads the metadata of files written by the TorchScript-based exporter (opset 17), as
    they are: the metadata_props of such a file, verbatim, on a tiny graph with the same input and output."""
    from onnx import TensorProto, helper

    props = json.loads((Path(__file__).parent / "data" / "onnx_metadata_props_2026-12.json").read_text())
    assert props["opset"] == "17" and props["export_format"] == "onnx"
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 7], np.linspace(-1, 1, 7).tolist())
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "old", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 1, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 7])], [weight],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(proto, props)
    old = tmp_path / "model.onnx"
    onnx.save(proto, str(old))
    with pytest.raises(SystemExit) as e:
        predict_main(["--onnx", str(old), str(check_images), "--face", "raw"])
    assert e.value.code == 0
    records = json.loads((tmp_path / "predictions" / "raw" / "predictions.json").read_text())
    assert len(records) == 7 and {r["winner"] for r in records} <= set(json.loads(props["class_names"]))


def _garbage(good: Path, bad: Path) -> None:
    bad.write_bytes(b"\x08\x07 this is not a protobuf \xff\xfe" * 10)


def _truncated(good: Path, bad: Path) -> None:
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])


def _external_weights(good: Path, bad: Path) -> None:
    proto = onnx.load(str(good))
    onnx.save(proto, str(bad), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)


def _no_metadata(good: Path, bad: Path) -> None:
    proto = onnx.load(str(good))
    del proto.metadata_props[:]
    onnx.save(proto, str(bad))


def _metadata(**changes: object):
    """A copy whose metadata says something the graph does not do (issue 26, item 23)."""

    def damage(good: Path, bad: Path) -> None:
        proto = onnx.load(str(good))
        for prop in proto.metadata_props:
            if prop.key in changes:
                prop.value = json.dumps(changes[prop.key])
        onnx.save(proto, str(bad))

    return damage


@pytest.mark.parametrize(
    ("damage", "message"),
    [(_garbage, "damaged or not an ONNX model"), (_truncated, "damaged or not an ONNX model"),
     (_no_metadata, "not a model exported by `poetry run export`"),
     (_external_weights, "keeps its weights in external files"),
     (_metadata(class_names=["a", "b", "c", "d", "e"]),
      "the metadata does not match the model graph (output (N, 7) but the metadata names 5 classes); the file was "
      "changed after export. Export it again with `poetry run export --run RUN`"),
     (_metadata(channels=3, mean=[0.5] * 3, std=[0.5] * 3),
      "the metadata does not match the model graph (input (N, 1, 32, 32) but the metadata says (N, 3, 32, 32) "
      "(channels=3, image_size=32))")],
)
def test_damaged_onnx_exits_2_naming_the_file(damage, message, exported, check_images, tmp_path, caplog):
    bad = tmp_path / "bad.onnx"
    damage(exported, bad)
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as e:
        predict_main(["--onnx", str(bad), str(check_images), "--out", str(tmp_path / "out")])
    assert e.value.code == 2
    assert str(bad) in caplog.text and message in caplog.text
    assert not (tmp_path / "out").exists()


def test_failed_parity_exits_2_and_says_why(trained_run, check_images, tmp_path, monkeypatch, caplog):
    def off_by_a_bit(self, x):
        return torch.from_numpy(self.run_numpy(x.numpy())) + torch.linspace(0, 1, 7)

    monkeypatch.setattr(OnnxModel, "__call__", off_by_a_bit)
    out = tmp_path / "model.onnx"
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as e:
        export_main(["--run", str(trained_run), "--out", str(out), "--check-images", str(check_images), "--repeats", "1"])
    assert e.value.code == 2
    assert "parity check failed" in caplog.text and str(out) in caplog.text
    parity = json.loads(out.with_name("parity.json").read_text())
    assert parity["ok"] is False and parity["max_abs_diff"] > 1e-4


def test_export_checks_its_inputs_before_writing(trained_run, tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    for argv in (
        ["--run", str(tmp_path / "missing-run")],
        ["--run", str(trained_run), "--check-images", str(tmp_path / "empty"), "--out", str(tmp_path / "x" / "model.onnx")],
    ):
        with pytest.raises(SystemExit) as e:
            export_main(argv)
        assert e.value.code == 2
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(not (SHARED_DATA / "new-images").is_dir(), reason="../shared/data/new-images absent")
def test_parity_on_the_real_new_images(trained_run, tmp_path):
    shutil.rmtree(tmp_path / "e", ignore_errors=True)
    with pytest.raises(SystemExit) as e:
        export_main(["--run", str(trained_run), "--out", str(tmp_path / "e" / "model.onnx"),
                     "--check-images", str(SHARED_DATA / "new-images"), "--repeats", "2"])
    assert e.value.code == 0
    parity = json.loads((tmp_path / "e" / "parity.json").read_text())
    assert parity["images"] == 14 and parity["same_winners"] == 14 and np.isfinite(parity["max_abs_diff"])
