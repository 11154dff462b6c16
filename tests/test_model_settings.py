"""Per-model sampling settings: defaults from the model's own files (a fixture's
generation_config.json; the general.sampling.* keys Itamae's converter writes, read back
also by gguf-py's own reader; an Ollama params layer), changed values that survive a
restart, and presets."""

from __future__ import annotations

import json
import shutil

import gguf
import pytest

from app.model_settings import ModelSettings
from app.settings import SamplingDefaults
from converters.conversion.convert import convert
from converters.core.errors import ItamaeError
from converters.facts.sampling_defaults import sampling_defaults

APP = SamplingDefaults()  # temperature 0.7, top_p 0.95, top_k 40, min_p 0.05, ...


@pytest.fixture
def olmoe(hf_checkpoint, tmp_path):
    """The olmoe fixture with a generation config like Qwen3's model card recommends."""
    folder = tmp_path / "olmoe"
    shutil.copytree(hf_checkpoint("olmoe"), folder)
    config = json.loads((folder / "generation_config.json").read_text())
    config |= {
        "temperature": 0.6,
        "top_p": 0.95,
        "top_k": 20,
        "min_p": 0.0,
        "repetition_penalty": 1.05,
    }
    (folder / "generation_config.json").write_text(json.dumps(config))
    return folder


def test_defaults_come_from_generation_config(olmoe, tmp_path):
    settings = ModelSettings(tmp_path / "model_settings.json")
    got = settings.sampling(str(olmoe), olmoe, APP)
    assert got.model_source == "generation_config.json"
    assert (got.values.temperature, got.values.top_p, got.values.top_k) == (0.6, 0.95, 20)
    assert (got.values.min_p, got.values.repeat_penalty) == (0.0, 1.05)
    assert got.values.max_tokens == APP.max_tokens and got.sources["max_tokens"] == "app"
    assert got.sources["temperature"] == "model"


def test_greedy_generation_config_means_temperature_zero(olmoe):
    config = json.loads((olmoe / "generation_config.json").read_text())
    (olmoe / "generation_config.json").write_text(json.dumps(config | {"do_sample": False}))
    assert sampling_defaults(olmoe)[0]["temperature"] == 0.0


def test_defaults_come_from_a_gguf_general_sampling(olmoe, tmp_path):
    gguf_file = tmp_path / "olmoe.gguf"
    convert(olmoe, gguf_file, "Q8_0")
    reader = gguf.GGUFReader(gguf_file)  # gguf-py's own reader as the reference
    temp = reader.get_field(gguf.Keys.General.SAMPLING_TEMP)
    assert temp.contents() == pytest.approx(0.6)
    values, source = sampling_defaults(gguf_file)
    assert source == "general.sampling.*"
    assert values == {"temperature": 0.6, "top_k": 20, "top_p": 0.95, "min_p": 0.0}
    got = ModelSettings(tmp_path / "model_settings.json").sampling("q", gguf_file, APP)
    assert (got.values.top_k, got.values.repeat_penalty) == (20, APP.repeat_penalty)


def test_defaults_come_from_an_ollama_params_layer(tmp_path):
    store = tmp_path / "ollama" / "models"
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "qwen3" / "30b-a3b"
    manifest.parent.mkdir(parents=True)
    (store / "blobs").mkdir()
    digest = "sha256:" + "ab" * 32
    (store / "blobs" / digest.replace(":", "-")).write_text(
        json.dumps(
            {
                "temperature": 0.6,
                "top_k": 20,
                "top_p": 0.95,
                "repeat_penalty": 1,
                "num_predict": -1,
                "stop": ["<|im_start|>", "<|im_end|>"],
            }
        )
    )
    manifest.write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "layers": [
                    {
                        "mediaType": "application/vnd.ollama.image.model",
                        "digest": "sha256:" + "cd" * 32,
                        "size": 1,
                    },
                    {
                        "mediaType": "application/vnd.ollama.image.params",
                        "digest": digest,
                        "size": 100,
                    },
                ],
            }
        )
    )
    values, source = sampling_defaults(manifest)
    assert source == "Ollama params"
    assert values == {"temperature": 0.6, "top_k": 20, "top_p": 0.95, "repeat_penalty": 1.0}


def test_a_changed_value_survives_a_restart(olmoe, tmp_path):
    path = tmp_path / "model_settings.json"
    ModelSettings(path).save(str(olmoe), temperature=0.3, max_tokens=2048)
    restarted = ModelSettings(path)  # a new process reads the same file
    got = restarted.sampling(str(olmoe), olmoe, APP)
    assert (got.values.temperature, got.values.max_tokens) == (0.3, 2048)
    assert (got.sources["temperature"], got.sources["top_k"]) == ("saved", "model")
    assert got.values.top_k == 20  # the rest still from the model
    other = restarted.sampling("another model", None, APP)
    assert other.values == APP  # saved per model, not globally
    restarted.reset(str(olmoe))
    assert ModelSettings(path).sampling(str(olmoe), olmoe, APP).values.temperature == 0.6


def test_presets_built_in_and_saved(tmp_path):
    path = tmp_path / "model_settings.json"
    settings = ModelSettings(path)
    assert {"precise", "balanced", "creative"} <= set(settings.presets())
    settings.save_preset("  my   code ", SamplingDefaults(temperature=0.1, top_k=10))
    assert ModelSettings(path).presets()["my code"]["top_k"] == 10
    settings.apply_preset("m", "my code")
    assert ModelSettings(path).sampling("m", None, APP).values.temperature == 0.1
    settings.delete_preset("my code")
    assert "my code" not in ModelSettings(path).presets()
    with pytest.raises(ItamaeError):
        settings.apply_preset("m", "my code")


@pytest.mark.parametrize("changes", [{"temperature": 5}, {"top_k": "many"}, {"seed": 3}])
def test_values_out_of_range_or_unknown_are_refused(tmp_path, changes):
    settings = ModelSettings(tmp_path / "model_settings.json")
    with pytest.raises(ItamaeError) as e:
        settings.save("m", **changes)
    assert e.value.hint
    assert not (tmp_path / "model_settings.json").exists()
