"""The training CLIs as a new user meets them: fast --help, checks before torch, nothing overwritten,
weights brought from a file or a pre-filled Hugging Face cache (never the network), honest defaults."""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from training import evaluate, train, weights
from training.cli_common import BACKBONE_LR, HEAD_LR

from _training_util import CHEAP_CORPUS, tiny_run

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


# -- before torch -------------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [["--help"], ["--data", "no-such-dir", "--out", "x"]])
def test_help_and_a_data_typo_answer_without_importing_torch(argv) -> None:
    code = ("import sys\nfrom training.train import main\ntry:\n    main(%r)\nexcept SystemExit as e:\n"
            "    print('EXIT', e.code, 'torch' in sys.modules, 'open_clip' in sys.modules)\n" % argv)
    r = _python(code)
    assert r.stdout.strip().splitlines()[-1] == f"EXIT {0 if argv == ['--help'] else 2} False False", r.stderr
    if argv != ["--help"]:
        assert "--data no-such-dir: no such directory" in r.stderr


@pytest.mark.parametrize("parser", [train.build_parser(), evaluate.build_parser()], ids=["train", "evaluate"])
def test_every_flag_has_help_and_its_default_once(parser: argparse.ArgumentParser) -> None:
    fmt = parser._get_formatter()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and action.help.strip(), action.option_strings
        text = fmt._expand_help(action)
        assert text.count("default") <= 1, (action.option_strings, text)
    assert "(default: None)" not in parser.format_help()


# -- nothing overwritten ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from training.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("d"), ["tconv", "nearest"], n_train=6, n_val=4, size=64, seed=0,
                         progress=False)


def _argv(out: Path, data: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--out", str(out), "--backbone", "nsnet-tiny", "--pretrained", "none", "--quiet",
            "--threads", "1", "--batch-size", "4", *CHEAP_CORPUS, *extra]


def test_an_existing_run_is_refused_without_resume_or_overwrite(tiny_data, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert train.main(_argv(run, tiny_data, "--epochs", "2", "--generators", "tconv")) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(SystemExit) as e:
        train.main(_argv(run, tiny_data, "--epochs", "1"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "trained for 2 epoch(s)" in err and "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    assert train.main(_argv(run, tiny_data, "--epochs", "0", "--overwrite")) == 0
    meta = json.loads((run / "nsnet.json").read_text())
    assert meta["training"]["epochs"] == 0
    # the old run's resume state and per-epoch log went with it: a later --resume cannot mix the two runs
    assert not (run / train.TRAIN_STATE).exists() and not (run / train.METRICS).exists()


def test_an_empty_existing_folder_is_fine(tmp_path) -> None:
    (tmp_path / "run").mkdir()
    tiny_run(tmp_path / "run")
    assert (tmp_path / "run" / "nsnet.json").is_file()


def test_resuming_with_another_lora_rank_names_both(tiny_data, tmp_path, capsys) -> None:
    run = tiny_run(tmp_path / "run", "--lora-rank", "2")
    with pytest.raises(SystemExit) as e:
        train.main(_argv(run, tiny_data, "--epochs", "1", "--resume", "--lora-rank", "4"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--lora-rank 2" in err and "--lora-rank 4" in err
    assert json.loads((run / "nsnet.json").read_text())["training"]["epochs"] == 0


# -- defaults -----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags,lr", [((), HEAD_LR), (("--lora-rank", "2"), BACKBONE_LR),
                                      (("--train-backbone",), BACKBONE_LR), (("--lr", "0.02"), 0.02)])
def test_default_lr_follows_what_trains(tmp_path, flags, lr) -> None:
    run = tiny_run(tmp_path / "run", *flags)
    assert json.loads((run / "nsnet.json").read_text())["training"]["lr"] == lr


def test_no_validation_split_is_said_and_val_split_holds_one_out(tmp_path, caplog) -> None:
    from training.synthetic import write_dataset

    src = write_dataset(tmp_path / "src", ["tconv"], n_train=8, n_val=0, size=64, seed=0, progress=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    (src / "tconv" / "train" / "ai").rename(flat / "fake")
    (src / "tconv" / "train" / "nature").rename(flat / "real")
    with caplog.at_level(logging.WARNING, logger="training"):
        assert train.main(_argv(tmp_path / "a", flat, "--epochs", "1", "--cache-features")) == 0
    assert any("no validation split" in r.getMessage() and "--val-split" in r.getMessage() for r in caplog.records)
    assert "val_acc" not in json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])

    assert train.main(_argv(tmp_path / "b", flat, "--epochs", "1", "--cache-features", "--val-split", "0.25")) == 0
    rec = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["val_n"] == 4 and rec["images"] == 12  # 2 of 8 per class held out
    assert json.loads((tmp_path / "b" / "nsnet.json").read_text())["data"]["n_images"] == 12


def test_split_off_is_stratified_disjoint_and_seeded() -> None:
    from training.data import Sample, split_off

    samples = [Sample(Path(f"{g}/{y}/{i}.png"), y, g) for g in ("a", "b") for y in (0, 1) for i in range(10)]
    tr, va = split_off(samples, 0.2, seed=3)
    assert {s.path for s in tr} | {s.path for s in va} == {s.path for s in samples}
    assert not {s.path for s in tr} & {s.path for s in va}
    assert sorted((s.generator, s.label) for s in va) == sorted([(g, y) for g in "ab" for y in (0, 1)] * 2)
    assert split_off(samples, 0.2, seed=3) == (tr, va) and split_off(samples, 0.2, seed=4)[1] != va


# -- evaluation tables --------------------------------------------------------------------------

def test_evaluate_marks_generators_seen_in_training(tiny_data, tmp_path) -> None:
    run = tmp_path / "run"
    assert train.main(_argv(run, tiny_data, "--epochs", "1", "--generators", "tconv", "--cache-features")) == 0
    assert evaluate.main(["--ckpt", str(run), "--data", str(tiny_data), "--out", str(tmp_path / "rep"),
                          "--quiet", "--threads", "1"]) == 0
    table = (tmp_path / "rep" / "table.md").read_text()
    assert "| tconv (seen) |" in table and "| nearest (unseen) |" in table
    per = json.loads((tmp_path / "rep" / "metrics.json").read_text())["per_generator"]
    assert per["tconv"]["seen"] is True and per["nearest"]["seen"] is False


def test_a_checkpoint_without_training_data_marks_nothing(tiny_data, tmp_path) -> None:
    run = tiny_run(tmp_path / "run")
    assert evaluate.main(["--ckpt", str(run), "--data", str(tiny_data), "--out", str(tmp_path / "rep"),
                          "--quiet", "--threads", "1"]) == 0
    table = (tmp_path / "rep" / "table.md").read_text()
    assert "| tconv |" in table and "(seen)" not in table and "(unseen)" not in table


# -- weights ------------------------------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: the offline routes must never try one."""
    def refuse(*a, **k):
        raise AssertionError(f"network connection attempted: {a}")
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _random_tiny_clip(seed: int):
    import open_clip
    import torch

    import nsnet_sdk.model  # noqa: F401

    torch.manual_seed(seed)
    return open_clip.create_model("nsnet-tiny", pretrained=None)


def _visual_equal(run: Path, state: dict) -> None:
    import torch
    from safetensors.torch import load_file

    saved = load_file(str(run / "nsnet.safetensors"))
    keys = [k for k in state if k.startswith("visual.")]
    assert keys and all(torch.equal(saved[k], state[k]) for k in keys)


@pytest.mark.parametrize("kind", ["safetensors", "open_clip checkpoint"])
def test_pretrained_file_is_loaded_as_is(tmp_path, no_network, kind) -> None:
    import torch
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in _random_tiny_clip(seed=123).state_dict().items()}
    if kind == "safetensors":
        path = tmp_path / "tiny.safetensors"
        save_file(state, str(path))
    else:  # what open_clip's training writes: {"state_dict": {"module.<key>": tensor}, "epoch": N}
        path = tmp_path / "epoch_1.pt"
        torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    run = tmp_path / "run"
    assert train.main(["--data", str(tmp_path / "none"), "--out", str(run), "--backbone", "nsnet-tiny",
                       "--pretrained", str(path), "--epochs", "0", "--quiet", *CHEAP_CORPUS]) == 0
    _visual_equal(run, state)
    meta = json.loads((run / "nsnet.json").read_text())
    assert meta["pretrained"] == str(path) and meta["pretrained_source"]["source"] == "file"
    # and they are not what a random init with the run's seed gives (else this proves nothing)
    other = _random_tiny_clip(seed=0).state_dict()
    assert not torch.equal(other["visual.conv1.weight"], state["visual.conv1.weight"])


def test_fetched_file_sidecar_sets_quick_gelu_and_guards_the_model(tmp_path, no_network) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "nsnet-tiny-fake.safetensors"
    save_file({k: v.contiguous() for k, v in _random_tiny_clip(1).state_dict().items()}, str(path))
    path.with_suffix(".json").write_text(json.dumps({"model": "nsnet-tiny", "tag": "fake", "quick_gelu": True}))
    run = tiny_run(tmp_path / "run", "--pretrained", str(path))
    meta = json.loads((run / "nsnet.json").read_text())
    assert meta["quick_gelu"] is True and meta["pretrained_source"]["tag"] == "fake"

    path.with_suffix(".json").write_text(json.dumps({"model": "ViT-L-14", "tag": "openai", "quick_gelu": True}))
    with pytest.raises(SystemExit) as e:
        tiny_run(tmp_path / "run2", "--pretrained", str(path))
    assert "holds ViT-L-14 weights, not nsnet-tiny" in str(e.value)


@pytest.fixture
def tiny_tag(monkeypatch):
    """A pretrained tag for nsnet-tiny hosted on a (made-up) Hugging Face repo, as open_clip registers
    its own tags; returns the repo id."""
    import open_clip.pretrained as op

    monkeypatch.setitem(op._PRETRAINED, "nsnet-tiny", {"fake": op._pcfg(hf_hub="nsnet-test/tiny-clip/")})
    return "nsnet-test/tiny-clip"


def _fill_hf_cache(cache: Path, repo: str, filename: str, write) -> None:
    """The Hugging Face hub cache layout: models--org--name/{refs/main, snapshots/<commit>/<file>}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    (base / "snapshots" / commit).mkdir(parents=True)
    write(base / "snapshots" / commit / filename)


def test_prefilled_hf_cache_works_offline(tmp_path, monkeypatch, tiny_tag, no_network) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in _random_tiny_clip(seed=5).state_dict().items()}
    cache = tmp_path / "hub"
    _fill_hf_cache(cache, tiny_tag, "open_clip_model.safetensors", lambda p: save_file(state, str(p)))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tiny_run(tmp_path / "run", "--pretrained", "fake")
    _visual_equal(run, state)
    assert json.loads((run / "nsnet.json").read_text())["pretrained_source"]["source"] == "hf-cache"


def test_missing_weights_offline_fail_at_once_with_one_line(tmp_path, monkeypatch, tiny_tag, no_network) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as e:
        tiny_run(tmp_path / "run", "--pretrained", "fake")
    msg = str(e.value)
    assert msg.startswith("error: --pretrained fake:") and "\n" not in msg
    assert "python -m training.weights fetch --model nsnet-tiny --tag fake --out DIR" in msg
    assert not (tmp_path / "run").exists()


def test_readme_command_offline_is_one_line_without_traceback(tmp_path) -> None:
    """The README's ViT-L-14 + openai command on an offline machine with an empty cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "XDG_CACHE_HOME")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HOME=str(tmp_path), PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "training.train", "--data", str(tmp_path), "--out", str(tmp_path / "r"),
                        "--backbone", "ViT-L-14", "--pretrained", "openai", "--epochs", "0"], cwd=REPO,
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "HF_HUB_OFFLINE" in lines[0] and "training.weights fetch --model ViT-L-14 --tag openai" in lines[0]


def test_unknown_tag_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="its tags: .*openai"):
        weights.locate("ViT-L-14", "opneai")


def test_fetch_copies_cached_weights_with_a_sidecar_that_training_reads(tmp_path, monkeypatch, tiny_tag,
                                                                        no_network) -> None:
    """The helper's offline half: from a filled cache to a folder, then training from that folder
    with the cache gone (the download itself needs a network and is not exercised here)."""
    import hashlib

    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in _random_tiny_clip(seed=9).state_dict().items()}
    cache = tmp_path / "hub"
    _fill_hf_cache(cache, tiny_tag, "open_clip_model.safetensors", lambda p: save_file(state, str(p)))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.main(["fetch", "--model", "nsnet-tiny", "--tag", "fake", "--out", str(tmp_path / "w")]) == 0
    dst = tmp_path / "w" / "nsnet-tiny-fake.safetensors"
    side = json.loads(dst.with_suffix(".json").read_text())
    assert side["model"] == "nsnet-tiny" and side["tag"] == "fake" and side["quick_gelu"] is False
    assert side["sha256"] == hashlib.sha256(dst.read_bytes()).hexdigest()

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    run = tiny_run(tmp_path / "run", "--pretrained", str(dst))
    _visual_equal(run, state)
