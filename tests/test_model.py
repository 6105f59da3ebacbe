"""Model building: conv_in expansion, the stored empty prompt, tiny components, released import."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPTextModel

from stablemotion.model import (
    EmptyTextEmbedding,
    build_pipeline,
    empty_text_embedding,
    expand_conv_in,
    import_released_checkpoint,
    infer_task,
    tiny_components,
)
from stablemotion.model.pipeline import StableMotionPipeline
from stablemotion.tasks import RSC, SIR, TaskSpec


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("num_conditions", [1, 2])
def test_conv_in_expansion_keeps_pretrained_response(num_conditions: int) -> None:
    base = tiny_components(None, seed=3)["unet"]
    unet = expand_conv_in(copy.deepcopy(base), num_conditions)
    slots = num_conditions + 1
    assert unet.conv_in.in_channels == 4 * slots
    assert unet.config.in_channels == 4 * slots  # config updated, not stale
    assert torch.equal(unet.conv_in.bias, base.conv_in.bias)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = torch.randn(2, 2, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(unet.conv_in(z.repeat(1, slots, 1, 1)), base.conv_in(z), atol=1e-5)
        out = unet(z.repeat(1, slots, 1, 1), 500, encoder_hidden_states=emb).sample
        ref = base(z, 500, encoder_hidden_states=emb).sample
    assert torch.allclose(out, ref, atol=1e-4)
    # different latents in the slots give a different response (the test can fail)
    with torch.no_grad():
        other = unet.conv_in(torch.cat([torch.zeros_like(z)] * num_conditions + [z], 1))
    assert not torch.allclose(other, base.conv_in(z), atol=1e-3)


def test_expanded_unet_round_trips(tmp_path: Path) -> None:
    unet = expand_conv_in(tiny_components(None)["unet"], 2)
    unet.save_pretrained(tmp_path / "unet")
    assert json.loads((tmp_path / "unet" / "config.json").read_text())["in_channels"] == 12
    loaded = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert loaded.conv_in.in_channels == 12 and _same_weights(loaded, unet)


def test_expand_refuses_an_already_expanded_unet() -> None:
    unet = tiny_components("sir")["unet"]
    with pytest.raises(ValueError, match="4-channel"):
        expand_conv_in(unet, 2)


def test_tiny_components_are_seeded_and_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a, b, c = tiny_components("sir", seed=0), tiny_components("sir", seed=0), tiny_components("sir", seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_weights(a["unet"], b["unet"]) and _same_weights(a["vae"], b["vae"])
    assert not _same_weights(a["unet"], c["unet"])
    assert a["unet"].config.in_channels == 12 and tiny_components("rsc")["unet"].config.in_channels == 8
    sched = a["scheduler"].config
    assert (sched.timestep_spacing, sched.prediction_type, sched.clip_sample) == ("trailing", "v_prediction", False)


def test_empty_text_embedding_is_do_not_pad_and_round_trips(tiny_base: Path, tmp_path: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_base / "tokenizer")
    te = CLIPTextModel.from_pretrained(tiny_base / "text_encoder")
    emb = empty_text_embedding(te, tok)
    assert emb.shape == (1, 2, 32)  # BOS + EOS, not padded to 77
    with torch.no_grad():
        ref = te(torch.tensor([[tok.bos_token_id, tok.eos_token_id]]))[0]
    assert torch.allclose(emb, ref)
    module = EmptyTextEmbedding.from_tensor(emb)
    module.save_pretrained(tmp_path / "emb")
    loaded = EmptyTextEmbedding.from_pretrained(tmp_path / "emb")
    assert torch.equal(loaded(3), emb.expand(3, -1, -1))


def test_build_pipeline_from_local_base(tiny_base: Path, tmp_path: Path) -> None:
    pipe = build_pipeline(tiny_base, task="rsc")
    base_unet = UNet2DConditionModel.from_pretrained(tiny_base / "unet")
    assert pipe.unet.config.in_channels == 8 and pipe.task == RSC
    w = pipe.unet.conv_in.weight
    assert torch.allclose(w[:, :4], base_unet.conv_in.weight / 2) and torch.equal(w[:, :4], w[:, 4:])
    tok = AutoTokenizer.from_pretrained(tiny_base / "tokenizer")
    te = CLIPTextModel.from_pretrained(tiny_base / "text_encoder")
    assert torch.allclose(pipe.text_embedding.embedding, empty_text_embedding(te, tok))
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    # a saved pipeline folder holds no tokenizer / text encoder and can itself serve as a base
    pipe.save_pretrained(tmp_path / "pipe")
    assert not (tmp_path / "pipe" / "text_encoder").exists() and not (tmp_path / "pipe" / "tokenizer").exists()
    again = StableMotionPipeline.from_pretrained(tmp_path / "pipe")
    assert torch.equal(again.text_embedding.embedding, pipe.text_embedding.embedding)


def test_infer_task() -> None:
    assert infer_task(12) == SIR and infer_task(8) == RSC
    assert infer_task(12, "StableMotion_SIR") == SIR
    with pytest.raises(ValueError, match="names task 'rsc'"):
        infer_task(12, "StableMotion_RSC")
    with pytest.raises(ValueError, match="cannot tell"):
        infer_task(20)


def _released_folder(root: Path, task: TaskSpec, seed: int, with_vae: bool) -> Path:
    """The authors' layout: ``unet_ema/`` (diffusers) and ``vae/`` as accelerate's ``save_model`` writes it."""
    from accelerate import Accelerator

    comps = tiny_components(task, seed=seed)
    folder = root / f"StableMotion_{task.name.upper()}"
    comps["unet"].save_pretrained(folder / "unet_ema")
    if with_vae:
        Accelerator(cpu=True).save_model(comps["vae"], folder / "vae")
    return folder


def test_import_released_sir(tiny_base: Path, tmp_path: Path) -> None:
    folder = _released_folder(tmp_path / "released", SIR, seed=7, with_vae=True)
    assert sorted(p.name for p in (folder / "vae").iterdir()) == ["model.safetensors"]  # no config.json
    out = import_released_checkpoint(folder, tmp_path / "sir_pipe", base=tiny_base)
    pipe = StableMotionPipeline.from_pretrained(out)
    assert pipe.task == SIR and pipe.task.conditions == ("mask", "image")
    assert _same_weights(pipe.unet, UNet2DConditionModel.from_pretrained(folder / "unet_ema"))
    assert _same_weights(pipe.vae, tiny_components(SIR, seed=7)["vae"])  # the task's own fine-tuned VAE
    assert not _same_weights(pipe.vae, AutoencoderKL.from_pretrained(tiny_base / "vae"))
    assert pipe.config.default_final_step == "prev_sample" and pipe.config.mask_encoding == "as_read"
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    assert pipe.config.default_processing_resolution == [384, 512]
    with pytest.raises(FileExistsError):
        import_released_checkpoint(folder, out, base=tiny_base)
    import_released_checkpoint(folder, out, base=tiny_base, overwrite=True)


def test_import_released_rsc_uses_base_vae(tiny_base: Path, tmp_path: Path) -> None:
    root = tmp_path / "released"
    _released_folder(root, RSC, seed=8, with_vae=False)
    out = import_released_checkpoint(root, tmp_path / "rsc_pipe", base=tiny_base, subfolder="StableMotion_RSC")
    pipe = StableMotionPipeline.from_pretrained(out)
    assert pipe.task == RSC and pipe.unet.config.in_channels == 8
    assert _same_weights(pipe.vae, AutoencoderKL.from_pretrained(tiny_base / "vae"))


def test_import_rejects_mismatches(tiny_base: Path, tmp_path: Path) -> None:
    folder = _released_folder(tmp_path / "released", SIR, seed=7, with_vae=False)
    with pytest.raises(ValueError, match="wrong checkpoint"):
        import_released_checkpoint(folder, tmp_path / "x", base=tiny_base, task="rsc")
    renamed = folder.rename(folder.with_name("StableMotion_RSC"))
    with pytest.raises(ValueError, match="names task 'rsc'"):
        import_released_checkpoint(renamed, tmp_path / "y", base=tiny_base)
    with pytest.raises(FileNotFoundError, match="unet_ema"):
        import_released_checkpoint(tmp_path / "nothing", tmp_path / "z", base=tiny_base)
    bare_base = tmp_path / "bare"
    for sub in ("unet", "vae", "scheduler"):
        (bare_base / sub).mkdir(parents=True)
        for f in (tiny_base / sub).iterdir():
            (bare_base / sub / f.name).write_bytes(f.read_bytes())
    with pytest.raises(FileNotFoundError, match="empty-prompt embedding"):
        import_released_checkpoint(renamed, tmp_path / "w", base=bare_base, task="sir")
    assert not (tmp_path / "x").exists() and not (tmp_path / "w").exists()


def test_tiny_components_architecture_is_configurable():
    from stablemotion.model import tiny_pipeline

    pipe = tiny_pipeline("sir", seed=0, unet_channels=(16, 32, 32), unet_attention=(False, False, True),
                         vae_channels=(16, 32, 32), vae_attention=False, default_processing_resolution=[32, 32])
    assert pipe.vae_scale_factor == 4 and pipe.size_multiple == 16
    assert pipe.unet.config.down_block_types == ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D")
    assert pipe.vae.config.mid_block_add_attention is False
    out = pipe(np.zeros((32, 32, 3), np.uint8), mask=np.full((32, 32), 255, np.uint8), output_type="np",
               show_progress_bar=False)
    assert out.flow.shape == (1, 32, 32, 2) and np.isfinite(out.flow).all()
    with pytest.raises(ValueError, match="one flag per level"):
        tiny_pipeline("sir", unet_channels=(16, 32), unet_attention=(True,))


def test_convert_pipeline_to_fp16_halves_the_size_and_keeps_outputs(tmp_path):
    from stablemotion.model import convert_pipeline, load_pipeline, tiny_pipeline

    tiny_pipeline("rsc", seed=1).save_pretrained(tmp_path / "fp32")
    out = convert_pipeline(tmp_path / "fp32", tmp_path / "fp16")

    def size(d):
        return sum(f.stat().st_size for f in d.rglob("*.safetensors"))

    assert size(out) < 0.6 * size(tmp_path / "fp32")
    assert "_name_or_path" not in (out / "model_index.json").read_text()
    a, b = load_pipeline(tmp_path / "fp32", torch.float32), load_pipeline(out, torch.float32)
    assert b.unet.dtype == torch.float32
    img = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    fa = a(img, generator=torch.Generator().manual_seed(0), output_type="np", show_progress_bar=False).flow
    fb = b(img, generator=torch.Generator().manual_seed(0), output_type="np", show_progress_bar=False).flow
    assert np.abs(fa - fb).max() < 0.05 * max(1.0, np.abs(fa).max())
    with pytest.raises(FileExistsError):
        convert_pipeline(tmp_path / "fp32", out)


def test_load_pipeline_progress_false_hides_the_loading_bar_for_that_call_only(tmp_path, capsys):
    from diffusers.utils import logging as diffusers_logging

    from stablemotion.model import load_pipeline, tiny_pipeline

    tiny_pipeline("rsc", seed=1).save_pretrained(tmp_path / "p")
    assert diffusers_logging.is_progress_bar_enabled()
    capsys.readouterr()
    load_pipeline(tmp_path / "p", progress=False)
    assert "Loading pipeline components" not in capsys.readouterr().err
    assert diffusers_logging.is_progress_bar_enabled()  # the user's global setting is left alone
    load_pipeline(tmp_path / "p")
    assert "Loading pipeline components" in capsys.readouterr().err


def test_convert_command(tmp_path, capsys):
    from stablemotion.cli import main
    from stablemotion.model import tiny_pipeline

    tiny_pipeline("sir").save_pretrained(tmp_path / "p")
    assert main(["convert", str(tmp_path / "p"), "--out", str(tmp_path / "q")]) == 0
    assert "wrote fp16 pipeline folder" in capsys.readouterr().out
    assert main(["convert", str(tmp_path), "--out", str(tmp_path / "r")]) == 2  # not a pipeline folder


def test_folders_saved_with_the_old_module_layout_still_load(tmp_path: Path) -> None:
    """Before components.py, model_index.json named stablemotion.model as the embedding's library."""
    from stablemotion.model import tiny_pipeline

    tiny_pipeline("rsc").save_pretrained(tmp_path / "p")
    index = json.loads((tmp_path / "p" / "model_index.json").read_text())
    assert index["text_embedding"] == ["stablemotion.model.components", "EmptyTextEmbedding"]
    index["text_embedding"] = ["stablemotion.model", "EmptyTextEmbedding"]
    (tmp_path / "p" / "model_index.json").write_text(json.dumps(index))
    assert StableMotionPipeline.from_pretrained(tmp_path / "p").task == RSC


def test_tiny_model_command_writes_weights_with_the_umask_mode(tmp_path):
    import os

    from stablemotion.cli import main

    old = os.umask(0o022)
    try:
        assert main(["tiny-model", "--out", str(tmp_path / "m")]) == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "m").rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {"0o644"}, modes  # safetensors alone writes 0o600


def test_convert_damaged_folders_are_one_line_errors(tmp_path, capsys) -> None:
    import shutil

    from stablemotion.cli import main
    from stablemotion.model import tiny_pipeline

    tiny_pipeline("sir").save_pretrained(tmp_path / "p")
    for case, match in (("json", "not valid JSON"), ("vae", "vae/ folder"), ("weights", "damaged")):
        broken = tmp_path / f"b_{case}"
        shutil.copytree(tmp_path / "p", broken)
        if case == "json":
            (broken / "model_index.json").write_text("{")
        elif case == "vae":
            shutil.rmtree(broken / "vae")
        else:
            w = next((broken / "unet").glob("*.safetensors"))
            w.write_bytes(w.read_bytes()[:64])
        assert main(["convert", str(broken), "--out", str(tmp_path / f"o_{case}")]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and match in err and "Traceback" not in err, err
        assert not (tmp_path / f"o_{case}").exists()
