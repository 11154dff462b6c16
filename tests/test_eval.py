"""The quality report: metrics against torch's own definitions, llama.cpp's routing against
transformers' routers, both engines against each other, quant types in the expected order,
and the `itamae eval` command with its stored report.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.cli import main
from converters.core.errors import ItamaeError
from engine.evaluate import default_calibration_text, evaluate, load_quality_report, report_path
from engine.quality_metrics import compare_logits, routing_overlap

WINDOW = 128


@pytest.fixture(scope="module")
def text() -> str:
    """About 650 tokens (of the fixtures' 1000-token vocabulary) of the bundled text: English
    and Japanese, enough for five windows."""
    full = default_calibration_text()
    japanese = full.index("ここからは")
    return full[:700] + "\n" + full[japanese : japanese + 200]


@pytest.fixture(scope="module")
def ggufs(hf_checkpoint, tmp_path_factory):
    """Itamae's conversions of the tiny Qwen3-MoE (3 MoE layers, 8 experts, top-2)."""
    from converters.conversion.convert import convert

    folder = tmp_path_factory.mktemp("eval-ggufs")
    out = {}
    for recipe in ("F32", "Q8_0", "Q4_0", "Q2_K"):
        out[recipe] = folder / f"qwen3_moe-{recipe}.gguf"
        convert(hf_checkpoint("qwen3_moe"), out[recipe], recipe)
    return out


def test_metrics_match_torch_definitions():
    gen = torch.Generator().manual_seed(0)
    reference = torch.randn(40, 50, generator=gen) * 3
    model = reference + torch.randn(40, 50, generator=gen) * 0.5
    tokens = torch.randint(0, 50, (40,), generator=gen).tolist()
    stats = compare_logits(model.numpy(), reference.numpy(), tokens)
    log_p, log_q = reference.double().log_softmax(-1), model.double().log_softmax(-1)
    kl = F.kl_div(log_q[:-1], log_p[:-1], log_target=True, reduction="none").sum(-1)
    np.testing.assert_allclose(stats.kl, kl.numpy(), rtol=1e-9, atol=1e-12)
    ce = F.cross_entropy(model[:-1], torch.tensor(tokens[1:]), reduction="none")
    np.testing.assert_allclose(stats.nll_model, ce.numpy(), rtol=1e-5)
    assert stats.top1_same.tolist() == (model[:-1].argmax(-1) == reference[:-1].argmax(-1)).tolist()
    same = compare_logits(reference.numpy(), reference.numpy(), tokens)
    assert same.kl.max() == 0 and same.top1_same.all()


def test_routing_overlap():
    model = np.array([[0, 1], [2, 3], [4, 5], [7, 6]])
    reference = np.array([[1, 0], [2, 4], [0, 1], [6, 7]])
    overlap, match = routing_overlap(model, reference)
    assert overlap.tolist() == [1.0, 0.5, 0.0, 1.0]  # order within a token does not matter
    assert match.tolist() == [True, False, False, True]


def _transformers_routing(folder, ids: list[int]) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """transformers' logits and, per MoE layer, the experts its router chose (hooked)."""
    from tests.fixtures.reference import reference_model

    model = reference_model(folder)
    chosen: dict[int, np.ndarray] = {}
    for index, layer in enumerate(model.model.layers):
        if hasattr(layer.mlp, "experts"):
            # the router returns (logits, weights, expert indices) in transformers 5
            def keep(_module, _inputs, output, index=index):
                chosen[index] = output[-1].reshape(len(ids), -1).numpy()

            layer.mlp.gate.register_forward_hook(keep)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    return logits, chosen


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_llamacpp_routing_is_transformers_routing(hf_checkpoint, tmp_path, text, arch):
    """The experts read from llama.cpp's graph are the ones transformers' router picks
    (softmax top-k for Qwen3-MoE; sigmoid + bias + group-limited top-k for DeepSeek-V3)."""
    from converters.conversion.convert import convert
    from engine.llamacpp.scorer import LlamaCppScorer

    gguf = tmp_path / f"{arch}.gguf"
    convert(hf_checkpoint(arch), gguf, "F32")
    scorer = LlamaCppScorer(gguf, WINDOW)
    try:
        ids = scorer.tokenize(text, add_special=True)[:64]
        scored = scorer.score(ids)
        layers = scorer.moe_layers
    finally:
        scorer.close()
    logits, expected = _transformers_routing(hf_checkpoint(arch), ids)
    assert layers == sorted(expected) and layers  # the dense first layer of DeepSeek is not listed
    np.testing.assert_allclose(scored.logits, logits, atol=1e-3 * np.abs(logits).max())
    for layer in layers:
        got = np.sort(scored.routing[layer], axis=1)
        assert (got == np.sort(expected[layer], axis=1)).all(), layer


def test_f32_gguf_in_llamacpp_equals_source_in_torch_engine(ggufs, hf_checkpoint, text):
    """Two engines, one model: llama.cpp on the F32 GGUF, the torch engine on the HF folder."""
    chat = "<|im_start|>user\nこんにちは<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    report = evaluate(ggufs["F32"], hf_checkpoint("qwen3_moe"), text=chat + text, window=WINDOW)
    assert (report["model_engine"], report["reference_engine"]) == ("llama.cpp", "torch")
    # ChatML markers in the text are special tokens in both engines, as in HF tokenizers
    assert report["tokenizations_agree"] and report["routing_observed"]
    assert report["windows"] >= 4 and report["moe_layers"] == [0, 1, 2]
    assert report["kl_mean"] < 1e-8 and report["top1_agreement"] == 1.0
    assert report["expert_agreement"] == [1.0, 1.0, 1.0]
    assert report["ppl_model"] == pytest.approx(report["ppl_reference"], rel=1e-5)


def test_quant_types_in_expected_order(ggufs, text):
    reports = {
        q: evaluate(ggufs[q], ggufs["F32"], text=text, window=WINDOW)
        for q in ("Q8_0", "Q4_0", "Q2_K")
    }
    kl = [reports[q]["kl_mean"] for q in ("Q8_0", "Q4_0", "Q2_K")]
    top1 = [reports[q]["top1_agreement"] for q in ("Q8_0", "Q4_0", "Q2_K")]
    experts = [np.mean(reports[q]["expert_agreement"]) for q in ("Q8_0", "Q4_0", "Q2_K")]
    assert 0 < kl[0] < kl[1] < kl[2], kl
    assert top1[0] > top1[1] > top1[2], top1
    assert 1 > experts[0] > experts[1] > experts[2], experts
    for r in reports.values():
        assert r["kl_p99"] >= r["kl_median"] and r["kl_max"] >= r["kl_p99"]


DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo" / "hf"


@pytest.mark.skipif(not (DEMO / "model.safetensors").is_file(), reason="no demo model")
def test_quant_types_in_expected_order_on_the_trained_demo(tmp_path):
    """The bundled demo (every row 256 wide, so the K-quants apply) against its HF source in
    the torch engine, over the whole default calibration text: Q8_0 < Q4_0 < Q2_K."""
    from converters.conversion.convert import convert

    kl = []
    for recipe in ("Q8_0", "Q4_0", "Q2_K"):
        gguf = tmp_path / f"demo-{recipe}.gguf"
        convert(DEMO, gguf, recipe)
        kl.append(evaluate(gguf, DEMO)["kl_mean"])
    assert 0 < kl[0] < kl[1] < kl[2], kl


def test_torch_format_int8_closer_than_int4(hf_checkpoint, tmp_path, text):
    """The torch engine on both sides: its int8 and int4 expert formats against the source."""
    from converters.conversion.convert import convert

    source = hf_checkpoint("qwen3_moe")
    kl, experts = {}, {}
    for recipe in ("int8", "int4"):
        convert(source, tmp_path / recipe, recipe, fmt="torch")
        report = evaluate(tmp_path / recipe, source, text=text[:500], window=WINDOW)
        assert (report["model_engine"], report["reference_engine"]) == ("torch", "torch")
        kl[recipe], experts[recipe] = report["kl_mean"], np.mean(report["expert_agreement"])
    assert 0 < kl["int8"] < kl["int4"]
    assert 1 > experts["int8"] > experts["int4"]


def test_cli_eval_writes_report_beside_model(ggufs, tmp_path, text, capsys):
    text_file = tmp_path / "calibration.txt"
    text_file.write_text(text, encoding="utf-8")
    model = ggufs["Q8_0"]
    args = ["eval", "--model", str(model), "--reference", str(ggufs["F32"])]
    rc = main([*args, "--text", str(text_file), "--window", str(WINDOW), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    for key, kind in (
        ("kl_mean", float),
        ("kl_p99", float),
        ("top1_agreement", float),
        ("ppl_model", float),
        ("ppl_reference", float),
        ("expert_agreement", list),
    ):
        assert isinstance(report[key], kind), key
    assert len(report["expert_agreement"]) == 3
    assert report["saved_to"] == str(report_path(model))
    assert report_path(model).name == "qwen3_moe-Q8_0.quality.json"
    stored = load_quality_report(model)
    assert stored == {k: v for k, v in report.items() if k != "saved_to"}

    # the human-readable form, without saving
    rc = main([*args, "--text", str(text_file), "--window", str(WINDOW), "--no-save"])
    out = capsys.readouterr().out
    assert rc == 0 and "KL mean" in out and "layer   2" in out and "saved" not in out


def test_bad_pairs_and_texts_are_refused(ggufs, hf_checkpoint, tmp_path, capsys):
    with pytest.raises(ItamaeError, match="not the same architecture"):
        evaluate(ggufs["Q8_0"], hf_checkpoint("deepseek_v3"), text="hello " * 50, window=WINDOW)
    with pytest.raises(ItamaeError, match="too short"):
        evaluate(ggufs["Q8_0"], ggufs["F32"], text="hi", window=WINDOW)
    args = ["eval", "--model", str(ggufs["Q8_0"]), "--reference", str(tmp_path / "missing")]
    assert main([*args, "--json"]) == 2
    assert "No model at" in json.loads(capsys.readouterr().out)["error"]
    bad_text = tmp_path / "latin1.txt"
    bad_text.write_bytes("caf\xe9".encode("latin-1"))
    args = ["eval", "--model", str(ggufs["Q8_0"]), "--reference", str(ggufs["F32"])]
    assert main([*args, "--text", str(bad_text)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_load_quality_report_missing_or_damaged(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    assert load_quality_report(model) is None
    report_path(model).write_text("{not json")
    assert load_quality_report(model) is None


def test_default_calibration_text_is_bilingual():
    text = default_calibration_text()
    assert 3000 < len(text.encode("utf-8")) < 20000
    assert any("\u3040" <= ch <= "\u30ff" for ch in text)  # kana
    assert "mixture-of-experts" in text


def test_dense_model_has_no_routing_figures(hf_checkpoint, tmp_path, text):
    from converters.conversion.convert import convert

    gguf = tmp_path / "llama-Q8_0.gguf"
    convert(hf_checkpoint("llama"), gguf, "Q8_0")
    report = evaluate(gguf, hf_checkpoint("llama"), text=text[:400], window=WINDOW)
    assert report["moe_layers"] == [] and report["expert_agreement"] == []
    assert not report["routing_observed"] and report["routing_note"] == ""
    assert report["expert_agreement_mean"] is None
    assert 0 < report["kl_mean"] < 0.05 and report["top1_agreement"] > 0.5
