import json

import pytest
from tiny import TINY_DIT_CONFIG, tiny_config

from xr0 import REPO_ROOT
from xr0.configuration_xr0 import XR0Config


def test_defaults_are_the_published_model():
    config = XR0Config()
    text, vision = config.vlm_config.text_config, config.vlm_config.vision_config
    assert (text.hidden_size, text.intermediate_size, text.num_hidden_layers) == (2560, 9728, 36)
    assert (text.num_attention_heads, text.num_key_value_heads, text.head_dim, text.vocab_size) == (
        32,
        8,
        128,
        151936,
    )
    assert (vision.depth, vision.hidden_size, vision.out_hidden_size, vision.patch_size) == (
        24,
        1024,
        2560,
        16,
    )
    assert list(vision.deepstack_visual_indexes) == [5, 11, 17]
    assert config.vlm_config.image_token_id == 151655
    assert type(config.dit_config).__name__ == "XR0DiTConfig"
    assert config.to_dict()["dit_config"] == {
        "model_type": "dit",  # the published dict form
        "hidden_size": 1024,
        "num_hidden_layers": 16,
        "head_dim": 128,
        "num_key_value_heads": 8,
        "intermediate_size": 4096,
        "rms_norm_eps": 1e-6,
    }
    assert (config.action_length, config.action_dim, config.state_dim) == (30, 32, 32)
    assert (config.state_length, config.num_inference_steps) == (1, 5)
    assert config.action_attention_window is None and config.noisy_action_position_offset == 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"dit_config": {**TINY_DIT_CONFIG, "head_dim": 32}}, "head_dim"),
        ({"dit_config": {**TINY_DIT_CONFIG, "num_key_value_heads": 4}}, "num_key_value_heads"),
        ({"dit_config": {**TINY_DIT_CONFIG, "num_hidden_layers": 5}}, "num_hidden_layers"),
        ({"dit_config": {**TINY_DIT_CONFIG, "hidden_size": 72}}, "multiple"),
        ({"dit_config": {**TINY_DIT_CONFIG, "depth": 2}}, "unknown keys"),
        ({"action_length": 0}, "action_length"),
        ({"state_dim": 2.5}, "state_dim"),
        ({"num_inference_steps": True}, "num_inference_steps"),
        ({"action_attention_window": 0}, "action_attention_window"),
        ({"noisy_action_position_offset": -1}, "noisy_action_position_offset"),
    ],
)
def test_invalid_values_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_official_dit_config_with_bookkeeping_loads_and_saves_in_its_published_form(tmp_path):
    official = json.loads((REPO_ROOT / "tests" / "data" / "official_config.json").read_text())
    official["dit_config"].update(
        return_dict=True, torch_dtype="float32", _name_or_path="", id2label={"0": "a"}
    )
    config = XR0Config(**{k: v for k, v in official.items() if k != "model_type"})
    assert (config.dit_config.hidden_size, config.dit_config.num_attention_heads) == (32, 4)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["dit_config"]
    assert {
        k: saved[k]
        for k in ("model_type", "hidden_size", "num_hidden_layers", "head_dim", "num_key_value_heads")
    } == {
        k: json.loads((REPO_ROOT / "tests" / "data" / "official_config.json").read_text())["dit_config"][k]
        for k in ("model_type", "hidden_size", "num_hidden_layers", "head_dim", "num_key_value_heads")
    }
    assert set(saved) <= {
        "model_type",
        "hidden_size",
        "num_hidden_layers",
        "head_dim",
        "num_key_value_heads",
        "intermediate_size",
        "rms_norm_eps",
    }
    assert XR0Config.from_pretrained(tmp_path).dit_config.to_dict() == config.dit_config.to_dict()


def test_dit_config_must_be_a_dict():
    with pytest.raises(TypeError, match="dit_config"):
        tiny_config(dit_config=[64, 2])


def test_official_config_json_loads(tmp_path):
    official = {
        "architectures": ["MiBoTForActionGeneration"],
        "auto_map": {"AutoConfig": "configuration_mibot.MiBoTConfig"},
        "model_type": "mibot",
        "torch_dtype": "bfloat16",
        "transformers_version": "4.57.1",
        "vlm_config": json.loads(json.dumps(XR0Config().to_dict()["vlm_config"])),
        "dit_config": {
            "hidden_size": 1024,
            "num_hidden_layers": 16,
            "head_dim": 128,
            "num_key_value_heads": 8,
        },
        "action_length": 30,
        "action_dim": 32,
        "state_dim": 32,
    }
    official["vlm_config"]["text_config"].pop("rope_parameters", None)
    (tmp_path / "config.json").write_text(json.dumps(official))
    config = XR0Config.from_pretrained(tmp_path)
    assert config.model_type == "xr0"
    assert getattr(config, "auto_map", None) is None
    assert config.vlm_config.text_config.num_hidden_layers == 36
    assert config.dit_config.num_key_value_heads == 8 and config.action_length == 30
    config.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["model_type"] == "xr0" and saved.get("architectures") in (None, [])


def test_saved_config_carries_both_rope_forms_and_reads_either(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    text = saved["vlm_config"]["text_config"]
    assert text["rope_theta"] == 10000.0 and text["rope_scaling"]["mrope_section"] == [2, 3, 3]
    assert text["tie_word_embeddings"] is True and saved["vlm_config"]["tie_word_embeddings"] is True
    # A config written by the other transformers line: only `rope_parameters` (5.x) present.
    text.pop("rope_scaling"), text.pop("rope_theta")
    text["rope_parameters"] = {
        "rope_type": "default",
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
        "rope_theta": 10000.0,
    }
    (tmp_path / "config.json").write_text(json.dumps(saved))
    reloaded = XR0Config.from_pretrained(tmp_path)
    rope = (
        getattr(reloaded.vlm_config.text_config, "rope_parameters", None)
        or reloaded.vlm_config.text_config.rope_scaling
    )
    assert list(rope["mrope_section"]) == [2, 3, 3]
    assert (
        float(rope.get("rope_theta", getattr(reloaded.vlm_config.text_config, "rope_theta", None))) == 10000.0
    )


def test_attn_implementation_reaches_the_vlm(tmp_path):
    tiny_config().save_pretrained(tmp_path)
    config = XR0Config.from_pretrained(tmp_path, attn_implementation="eager")
    assert config.vlm_config._attn_implementation == "eager"
    assert config.vlm_config.text_config._attn_implementation == "eager"
