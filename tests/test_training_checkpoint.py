"""--epochs 0 runs, checkpoint round-trip, short-context text encoding, LoRA merging."""
from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file

import nsnet_sdk.model  # noqa: F401  (registers nsnet-tiny)
from nsnet_sdk.errors import ModelLoadError
from nsnet_sdk.model import NSNet, load_checkpoint, save_checkpoint
from nsnet_sdk.model.checkpoint import plain_state_dict
from training.corpus import encode_texts, prompt_bank
from training.lora import add_lora, has_lora, merge_lora
from training.backbone import load_clip, wants_quick_gelu

from _training_util import tiny_run


def test_tiny_config_registered() -> None:
    assert "nsnet-tiny" in open_clip.list_models()
    cfg = open_clip.get_model_config("nsnet-tiny")
    assert cfg["vision_cfg"]["image_size"] == 224 and cfg["vision_cfg"]["patch_size"] == 32


def test_epochs0_writes_loadable_checkpoint(tmp_path) -> None:
    from nsnet_sdk.pipeline import DEFAULT

    run = tiny_run(tmp_path / "run")  # data folder does not exist: must not matter
    meta = json.loads((run / "nsnet.json").read_text())
    assert meta["format"] == "nsnet-checkpoint/1" and meta["backbone"] == "nsnet-tiny"
    assert meta["preprocess"] == DEFAULT.to_dict()
    assert meta["head"] == {"hidden": 512, "dim": 128, "activation": "gelu"}
    assert meta["data"]["n_images"] == 0 and meta["threshold"] == 0.5
    tensors = load_file(str(run / "nsnet.safetensors"))
    k = meta["projector"]["rank"]
    assert tensors["nullspace.basis"].shape == (meta["embed_dim"], k) and k >= 1
    assert {"head.0.weight", "head.2.weight", "classifier.weight", "visual.proj"} <= set(tensors)
    assert not any(key.startswith(("transformer.", "token_embedding", "text")) for key in tensors)
    u = tensors["nullspace.basis"].double()
    assert torch.allclose(u.T @ u, torch.eye(k, dtype=u.dtype), atol=1e-5)

    model = NSNet.from_checkpoint(run)
    assert not model.training
    loaded = model.state_dict()
    assert set(loaded) == set(tensors)
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value), key
    # The forward pass is NS-Net's formula applied to the file's tensors, written out here in
    # float64 from the safetensors (not from the module): f_null = f − (f·U)·Uᵀ,
    # logit = Wc·(W2·gelu(W0·f_null + b0) + b2) + bc.
    x = torch.randn(3, 3, 224, 224)
    t = {key: value.double() for key, value in tensors.items()}
    with torch.no_grad():
        f = model.features(x).double()
        f_null = f - (f @ t["nullspace.basis"]) @ t["nullspace.basis"].T
        assert (f_null @ t["nullspace.basis"]).abs().max() < 1e-6  # nothing left in the semantic span
        h = f_null @ t["head.0.weight"].T + t["head.0.bias"]
        h = 0.5 * h * (1 + torch.erf(h / 2 ** 0.5))  # exact GELU ("activation": "gelu")
        z = h @ t["head.2.weight"].T + t["head.2.bias"]
        expected = (z @ t["classifier.weight"].T + t["classifier.bias"]).squeeze(-1)
        logit = model(x)
    assert logit.shape == (3,) and model.embed(x).shape == (3, meta["head"]["dim"])
    assert torch.allclose(logit.double(), expected, atol=1e-5)
    assert torch.allclose(model.embed(x).double(), z, atol=1e-5)


def test_same_inputs_same_checkpoint(tmp_path) -> None:
    a = load_file(str(tiny_run(tmp_path / "a", "--seed", "3") / "nsnet.safetensors"))
    b = load_file(str(tiny_run(tmp_path / "b", "--seed", "3") / "nsnet.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_rank_flag_and_captions(tmp_path) -> None:
    caps = tmp_path / "caps.csv"
    caps.write_text("id,caption\n1,a red car on a street\n2,two dogs playing in the snow\n")
    run = tiny_run(tmp_path / "run", "--rank", "7", "--captions", str(caps))
    meta = json.loads((run / "nsnet.json").read_text())
    assert meta["projector"]["rank"] == 7 and meta["projector"]["corpus_size"] == 82


def test_short_context_text_encoding_is_exact() -> None:
    model, tokenizer, _ = load_clip("nsnet-tiny", "none")
    texts = prompt_bank("coco", 2)[:20] + ["a much longer caption with many more words in it than the prompts"]
    ours = encode_texts(model, tokenizer, texts, batch_size=8, progress=False)
    with torch.no_grad():
        full = model.encode_text(tokenizer(texts)).float()
    assert torch.allclose(ours, full, atol=1e-5)


def test_lora_merge_is_exact_and_checkpoint_has_plain_weights(tmp_path) -> None:
    model = NSNet.from_checkpoint(tiny_run(tmp_path / "run"))
    plain_keys = set(model.state_dict())
    params = add_lora(model.visual, rank=4)
    assert has_lora(model) and params
    with torch.no_grad():
        for p in params:  # B starts at zero: make the adapters non-trivial
            p.normal_(0, 0.05)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
        merged = plain_state_dict(model)
    assert set(merged) == plain_keys
    save_checkpoint(model, tmp_path / "lora", {"backbone": "nsnet-tiny"})
    assert has_lora(model), "saving must not merge the live model"
    reloaded = NSNet.from_checkpoint(tmp_path / "lora")
    merge_lora(model)
    assert not has_lora(model)
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)
        assert torch.allclose(reloaded(x), before, atol=1e-5)
    # and the adapters really changed the network (else this test proves nothing)
    with torch.no_grad():
        assert not torch.allclose(NSNet.from_checkpoint(tmp_path / "run")(x), before, atol=1e-4)


def test_missing_run_dir_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="nsnet.json"):
        load_checkpoint(tmp_path)


@pytest.mark.slow
def test_epochs0_real_architecture(real_run) -> None:
    # real_run: `training.train --epochs 0 --backbone ViT-B-32 --rank 16`, shared with the export tests
    model = NSNet.from_checkpoint(real_run("ViT-B-32"))
    assert model.nullspace.basis.shape == (512, 16)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1,)


def test_quick_gelu_follows_the_weights_and_round_trips(tmp_path) -> None:
    assert wants_quick_gelu("ViT-L-14", "openai")  # OpenAI weights were trained with QuickGELU
    assert not wants_quick_gelu("ViT-L-14", "none") and not wants_quick_gelu("nsnet-tiny", "none")
    clip, _, used = load_clip("nsnet-tiny", "none", quick_gelu=True)
    assert used
    model = NSNet(clip.visual, torch.linalg.qr(torch.randn(64, 3))[0])
    save_checkpoint(model, tmp_path, {"backbone": "nsnet-tiny", "quick_gelu": used})
    loaded = NSNet.from_checkpoint(tmp_path)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model.eval()(x), atol=1e-6)
    # the flag matters: the same weights in a GELU tower give different outputs
    plain, _ = load_checkpoint(tmp_path)
    gelu_visual, _, _ = load_clip("nsnet-tiny", "none", quick_gelu=False)
    gelu_visual = gelu_visual.visual
    gelu_visual.load_state_dict(model.visual.state_dict())
    with torch.no_grad():
        assert not torch.allclose(gelu_visual(x), plain.visual(x), atol=1e-4)


def test_log_every_thins_the_log_but_not_the_metrics(tmp_path, caplog):
    import json
    import logging

    from training.synthetic import write_dataset
    from training.train import main

    data = tmp_path / "data"
    write_dataset(data, generators=["tconv"], n_train=4, n_val=2, size=64, seed=0, progress=False)
    argv = ["--data", str(data), "--out", str(tmp_path / "run"), "--backbone", "nsnet-tiny", "--pretrained", "none",
            "--prompt-bank", "coco", "--templates", "1", "--cache-features", "--epochs", "5", "--batch-size", "4",
            "--quiet", "--threads", "1", "--log-every", "2"]
    with caplog.at_level(logging.INFO, logger="training"):
        assert main(argv) == 0
    logged = [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert logged == ["epoch 2", "epoch 4", "epoch 5"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2, 3, 4, 5]


def test_train_state_round_trips_optimizer_and_loss_scale(tmp_path) -> None:
    """--resume's state: Adam moments and the AMP loss scale come back (CPU scaler: same code as CUDA)."""
    from training.train import TRAIN_STATE, TRAIN_STATE_JSON, load_train_state, save_train_state

    run = tiny_run(tmp_path / "run")
    model = NSNet.from_checkpoint(run)
    opt = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
    model.head(torch.randn(4, model.embed_dim)).square().sum().backward()
    opt.step()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    save_train_state(run, model, opt, scaler, epoch=1)
    assert not list(run.glob("*.tmp")) and (run / TRAIN_STATE).is_file() and (run / TRAIN_STATE_JSON).is_file()

    fresh_opt = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
    fresh_scaler = torch.amp.GradScaler("cpu")
    assert fresh_scaler.get_scale() != 1024.0
    doc = load_train_state(run, model, fresh_opt, fresh_scaler)
    assert doc["epoch"] == 1
    assert fresh_scaler.get_scale() == 1024.0 and fresh_scaler.get_growth_interval() == 7
    saved, loaded = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert saved.keys() == loaded.keys() and saved
    for idx in saved:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(saved[idx][name], loaded[idx][name]), (idx, name)


@pytest.mark.parametrize("flags", [("--temperature", "0"), ("--lora-rank", "-1"), ("--jpeg-quality", "80", "40"),
                                   ("--jpeg-quality", "0", "90"), ("--blur-sigma", "2", "1"), ("--lr", "0"),
                                   ("--val-split", "1"), ("--captions", "no-such-captions.txt"),
                                   ("--pretrained", "no/such/weights.safetensors"), ("--resume", "--overwrite")])
def test_bad_training_flags_are_usage_errors(tmp_path, flags) -> None:
    """Refused before any work: a NaN loss (τ = 0) or a crash in the first batch is no answer."""
    from training.train import main

    with pytest.raises(SystemExit) as e:
        main(["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--backbone", "nsnet-tiny",
              "--pretrained", "none", "--quiet", *flags])
    assert e.value.code == 2 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags,needle", [(("--rank", "64"), "rank must be in"),
                                          (("--backbone", "ViT-Nope"), "ViT-Nope"),
                                          (("--pretrained", "no-such-tag"), "no-such-tag")])
def test_bad_training_inputs_end_in_one_error_line(tmp_path, flags, needle) -> None:
    from training.train import main

    argv = ["--data", str(tmp_path), "--out", str(tmp_path / "run"), "--backbone", "nsnet-tiny",
            "--pretrained", "none", "--epochs", "0", "--quiet", "--prompt-bank", "coco", "--templates", "1"]
    with pytest.raises(SystemExit) as e:
        main(argv + list(flags))
    assert str(e.value).startswith("error: ") and needle in str(e.value)
