"""Each upload format loads to the right weights; every kind of bad file is rejected by name."""

from __future__ import annotations

import os
import pickle
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from common.checkpoint_header import check_against_base, load_base_keys, parse_header
from common.errors import InvalidCheckpoint
from engine import CheckpointError
from engine.checkpoints import detect_format, load_customized_t2i, read_keys
from engine.tiny_checkpoints import _perturbed_unet


def load(base, path):
    return load_customized_t2i(base.components, path, base.unet_config_dir)


def test_unet_state_dict_loads_exactly(base, checkpoints):
    fmt, comps = load(base, checkpoints["unet"])
    expected = load_file(str(checkpoints["unet"]))
    got = comps["unet"].state_dict()
    assert fmt == "unet"
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_ldm_single_file_converts_to_the_same_weights(base, checkpoints):
    fmt, comps = load(base, checkpoints["ldm"])
    reference = _perturbed_unet(0).state_dict()
    got = comps["unet"].state_dict()
    assert fmt == "ldm"
    assert all(torch.equal(got[k], reference[k]) for k in reference)
    assert not torch.equal(got["conv_in.weight"], base.components["unet"].state_dict()["conv_in.weight"])


def test_lora_is_fused_as_w_plus_ba(base, checkpoints):
    fmt, comps = load(base, checkpoints["lora"])
    lora = load_file(str(checkpoints["lora"]))
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    a, b = lora[f"unet.{module}.lora_A.weight"], lora[f"unet.{module}.lora_B.weight"]
    w0 = base.components["unet"].state_dict()[f"{module}.weight"]
    got = comps["unet"].state_dict()[f"{module}.weight"]
    assert fmt == "lora"
    torch.testing.assert_close(got, w0 + b @ a, rtol=1e-5, atol=1e-6)
    untouched = "conv_in.weight"
    assert torch.equal(comps["unet"].state_dict()[untouched], base.components["unet"].state_dict()[untouched])


def test_kohya_lora_gives_the_same_weights_as_peft_lora(base, checkpoints):
    _, peft_comps = load(base, checkpoints["lora"])
    fmt, kohya_comps = load(base, checkpoints["lora-kohya"])
    assert fmt == "lora"
    a, b = peft_comps["unet"].state_dict(), kohya_comps["unet"].state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_base_components_are_never_modified(base, checkpoints):
    before = {k: v.clone() for k, v in base.components["unet"].state_dict().items()}
    for path in checkpoints.values():
        load(base, path)
    after = base.components["unet"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_format_detection_from_keys():
    assert detect_format(["unet.x.lora_A.weight"]) == "lora"
    assert detect_format(["lora_unet_down_blocks_0.lora_down.weight"]) == "lora"
    assert detect_format(["model.diffusion_model.input_blocks.0.0.weight"]) == "ldm"
    assert detect_format(["conv_in.weight"]) == "unet"


def _expect_error(base, path, *fragments):
    with pytest.raises(CheckpointError) as info:
        load(base, path)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert info.value.code == "invalid_checkpoint"
    assert info.value.field == "checkpoint"


def test_unknown_keys_are_rejected(base, checkpoints, tmp_path):
    tensors = load_file(str(checkpoints["unet"]))
    tensors["not_a_layer.weight"] = torch.zeros(3)
    save_file(tensors, str(tmp_path / "x.safetensors"))
    _expect_error(base, tmp_path / "x.safetensors", "unknown keys", "not_a_layer.weight")


def test_missing_keys_are_rejected(base, checkpoints, tmp_path):
    tensors = load_file(str(checkpoints["unet"]))
    del tensors["conv_in.weight"]
    save_file(tensors, str(tmp_path / "x.safetensors"))
    _expect_error(base, tmp_path / "x.safetensors", "missing", "conv_in.weight")


def test_wrong_shapes_are_rejected(base, checkpoints, tmp_path):
    tensors = load_file(str(checkpoints["unet"]))
    tensors["conv_in.weight"] = torch.zeros(7, 4, 3, 3)
    save_file(tensors, str(tmp_path / "x.safetensors"))
    _expect_error(base, tmp_path / "x.safetensors", "conv_in.weight", "shape")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_and_inf_are_rejected(base, checkpoints, tmp_path, bad):
    tensors = load_file(str(checkpoints["unet"]))
    tensors["conv_out.bias"][1] = bad
    save_file(tensors, str(tmp_path / "x.safetensors"))
    _expect_error(base, tmp_path / "x.safetensors", "conv_out.bias", "NaN or Inf")


def test_lora_for_another_architecture_is_rejected(base, tmp_path):
    save_file({"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight": torch.ones(4, 999),
               "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight": torch.ones(16, 4)},
              str(tmp_path / "x.safetensors"))
    with pytest.raises(CheckpointError):
        load(base, tmp_path / "x.safetensors")


def test_empty_and_random_bytes_are_rejected(base, tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    _expect_error(base, tmp_path / "empty.safetensors", "not a valid safetensors")
    (tmp_path / "noise.safetensors").write_bytes(os.urandom(4096))
    _expect_error(base, tmp_path / "noise.safetensors", "not a valid safetensors")
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    _expect_error(base, tmp_path / "huge.safetensors", "not a valid safetensors")
    (tmp_path / "nojson.safetensors").write_bytes(struct.pack("<Q", 8) + b"not json")
    _expect_error(base, tmp_path / "nojson.safetensors", "not a valid safetensors")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_checkpoint_is_never_unpickled(base, tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = marker
    payload = pickle.dumps({"state_dict": _Exploit()})
    for name in ("model.ckpt", "model.safetensors"):
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(CheckpointError):
            load(base, tmp_path / name)
        with pytest.raises(CheckpointError):
            read_keys(tmp_path / name)
    assert not marker.exists()


def test_ldm_single_file_with_text_encoder_and_vae_keys(base, checkpoints, tmp_path):
    """A full single-file SD checkpoint: UNet and text encoder are loaded, VAE keys are ignored."""
    tensors = load_file(str(checkpoints["ldm"]))
    text = base.components["text_encoder"].state_dict()
    for key, value in text.items():
        tensors["cond_stage_model.transformer.text_model." + key.removeprefix("text_model.")] = value + 0.01
    tensors["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    tensors["first_stage_model.decoder.conv_in.weight"] = torch.zeros(2)
    save_file(tensors, str(tmp_path / "full.safetensors"))
    fmt, comps = load(base, tmp_path / "full.safetensors")
    assert fmt == "ldm"
    got = comps["text_encoder"].state_dict()
    assert all(torch.allclose(got[k], v + 0.01) for k, v in text.items())
    assert all(not torch.equal(got[k], v) for k, v in text.items() if v.is_floating_point())


def _api_verdict(path) -> str:
    """What the API's upload check says of a file: its format, or "rejected: <message>"."""
    head = path.read_bytes()
    try:
        return check_against_base(parse_header(head, len(head), 16 * 1024**2), load_base_keys("tiny")).format
    except InvalidCheckpoint as exc:
        return f"rejected: {exc.message}"


def _engine_verdict(base, path) -> str:
    try:
        return load(base, path)[0]
    except CheckpointError as exc:
        return f"rejected: {exc.message}"


def _ldm_with(base, checkpoints, tmp_path, extra: dict):
    tensors = load_file(str(checkpoints["ldm"]))
    tensors.update(extra)
    save_file(tensors, str(tmp_path / "x.safetensors"))
    return tmp_path / "x.safetensors"


def _text_encoder(base, prefix: str, shift: float = 0.01) -> dict:
    return {prefix + "text_model." + k.removeprefix("text_model."): v + shift
            for k, v in base.components["text_encoder"].state_dict().items()}


@pytest.mark.parametrize("case", ["sgm text encoder", "conditioner extra", "wrong text-encoder shape",
                                  "partial text encoder", "stray schedule-like key"])
def test_the_api_check_and_the_engine_agree_on_single_file_uploads(base, checkpoints, tmp_path, case):
    """Regression: the API and the engine kept their own key rules. A ``conditioner.`` key (the generative-models
    layout) passed the API and failed the job; a text encoder of the wrong shape too; a ``log_…`` key the API
    refused the engine took. Both read `common.checkpoint_rules` now."""
    extra = {
        "sgm text encoder": _text_encoder(base, "conditioner.embedders.0.transformer."),
        "conditioner extra": {"conditioner.embedders.1.model.logit_scale": torch.ones(())},
        "wrong text-encoder shape": {**_text_encoder(base, "cond_stage_model.transformer."),
                                     "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.ones(3)},
        "partial text encoder": {"cond_stage_model.transformer.text_model.final_layer_norm.weight":
                                 base.components["text_encoder"].state_dict()["final_layer_norm.weight"]},
        "stray schedule-like key": {"log_something": torch.ones(2)},
    }[case]
    path = _ldm_with(base, checkpoints, tmp_path, extra)
    api, engine_says = _api_verdict(path), _engine_verdict(base, path)
    assert api.startswith("rejected") == engine_says.startswith("rejected"), (api, engine_says)
    assert (api == "ldm") == (case in ("sgm text encoder", "conditioner extra")), api


def test_a_text_encoder_in_the_generative_models_layout_is_loaded(base, checkpoints, tmp_path):
    path = _ldm_with(base, checkpoints, tmp_path, _text_encoder(base, "conditioner.embedders.0.transformer."))
    _, comps = load(base, path)
    got = comps["text_encoder"].state_dict()
    assert all(torch.allclose(got[k], v + 0.01) for k, v in base.components["text_encoder"].state_dict().items())

