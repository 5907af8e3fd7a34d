import pytest

from research.config import (
    ConfigError,
    all_keys,
    flatten,
    list_presets,
    load_config,
    parse_overrides,
)


def test_defaults_and_presets_load():
    assert {"scratch_cnn", "resnet18", "mobilenet_v3_small"} <= set(list_presets())
    for preset in list_presets():
        cfg = load_config(preset)
        assert cfg.model.name


def test_override_forms():
    cfg = load_config("scratch_cnn", ["optim.lr=3e-4", "--train.epochs=5", "--data.root", "demo"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.train.epochs == 5 and cfg.data.root == "demo"
    assert parse_overrides(["--a.b=1", "c.d=2", "--e.f", "3"]) == ["a.b=1", "c.d=2", "e.f=3"]


def test_unknown_key_names_nearest():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*optim.lr"):
        load_config(None, ["optim.lrr=1"])


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=1.5"])


def test_bad_choice_and_range():
    with pytest.raises(ConfigError, match="data.sampler='random' is not one of shuffle, balanced"):
        load_config(None, ["data.sampler=random"])
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(None, ["optim.lr=-1"])


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(path)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="presets: .*scratch_cnn"):
        load_config("vgg99")


def test_flatten_keys_equal_cli_keys():
    flat = flatten(load_config(None))
    assert set(flat) == set(all_keys())
    assert "optim.lr" in flat and "augment.rotate_limit" in flat


def test_config_is_read_only():
    cfg = load_config(None)
    from omegaconf.errors import ReadonlyConfigError

    with pytest.raises(ReadonlyConfigError):
        cfg.optim.lr = 1.0


def test_string_settings_keep_their_text():
    cfg = load_config(None, ["run.name=off", "data.root=2024", "wandb.group=null"])
    assert cfg.run.name == "off" and cfg.data.root == "2024" and cfg.wandb.group is None


def test_num_workers_auto_resolves_per_device(monkeypatch):
    """``data.num_workers=auto`` (the default): no worker processes on CPU, a few on CUDA with pinned
    memory, shared between the training processes of a machine; a number is kept; anything else is a
    config error naming the key."""
    import torch

    from research.builders import data as builders

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    cfg = load_config(None)
    assert cfg.data.num_workers == "auto"
    assert builders.num_workers(cfg.data, device=cpu) == 0
    monkeypatch.setattr(builders, "usable_cpus", lambda: 2)
    assert builders.num_workers(cfg.data, device=cuda) == 2  # a 2-core notebook with a GPU
    monkeypatch.setattr(builders, "usable_cpus", lambda: 32)
    assert builders.num_workers(cfg.data, device=cuda) == 4
    assert builders.num_workers(cfg.data, device=cuda, processes=16) == 2  # torchrun, 16 GPUs on 32 CPUs
    assert builders.num_workers(cfg.data, device=cuda, processes=64) == 1
    assert builders.num_workers(load_config(None, ["data.num_workers=3"]).data, device=cpu) == 3
    # a machine with a GPU, but the run is on the CPU (train.device=cpu): no workers, no pinned memory
    monkeypatch.setattr(builders.torch.cuda, "is_available", lambda: True)
    options = builders._loader_options(cfg.data, cpu)
    assert options["num_workers"] == 0 and not options["pin_memory"] and options["worker_init_fn"] is None
    options = builders._loader_options(cfg.data, cuda)
    assert options["num_workers"] == 4 and options["pin_memory"] and options["worker_init_fn"] is builders.seed_worker
    assert builders.num_workers(cfg.data) == 4  # no device given: CUDA when present
    for bad in ("-1", "many", "true"):
        with pytest.raises(ConfigError, match="data.num_workers.*auto or an integer >= 0"):
            load_config(None, [f"data.num_workers={bad}"])
