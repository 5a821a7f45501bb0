"""Every shipped config parses: stage YAMLs through their TrlParser dataclass, accelerate YAMLs, DeepSpeed JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

TRAINING = {"sft.yaml": "sft", "sft_hub_example.yaml": "sft", "ppo.yaml": "ppo", "rm.yaml": "rm", "dpo.yaml": "dpo"}
STAGE_CONFIGS = {
    "sft.yaml": "pipeline.sft:SFTStageConfig",
    "sft_hub_example.yaml": "pipeline.sft:SFTStageConfig",
    "candidates.yaml": "pipeline.candidates:CandidatesConfig",
    "ppo.yaml": "ppo.config:PPOStageConfig",
    "eval.yaml": "evaluation.evaluate:EvalConfig",
    "rm.yaml": "reward.config:RMStageConfig",
    "dpo.yaml": "dpo.train:DPOStageConfig",
    "labeling.yaml": "labeling_ui.config:LabelingConfig",
}
# The real model's settings (make demo-real), for the same stages.
STAGE_CONFIGS |= {
    f"smollm2/{name}": STAGE_CONFIGS[name]
    for name in ("sft.yaml", "candidates.yaml", "rm.yaml", "ppo.yaml", "dpo.yaml", "eval.yaml")
}
OTHER_CONFIGS = {"pipeline.yaml", "smollm2/pipeline.yaml"}  # not TrlParser configs: tested below


def load_class(spec: str):
    import importlib

    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def test_every_stage_yaml_is_listed_here():
    shipped = {str(p.relative_to(REPO / "configs")) for p in (REPO / "configs").glob("**/*.yaml")}
    shipped = {name for name in shipped if not name.startswith("accelerate/")}
    assert shipped == set(STAGE_CONFIGS) | OTHER_CONFIGS, "a new config in configs/ needs an entry in STAGE_CONFIGS"


@pytest.mark.parametrize("name", sorted(STAGE_CONFIGS))
def test_stage_yaml_parses(name, tmp_path, monkeypatch):
    from trl import TrlParser

    from pipeline.lib.stage import ModelArguments, RunArguments, parse

    monkeypatch.chdir(tmp_path)  # output dirs derived from the config must not land in the repo
    cls = load_class(STAGE_CONFIGS[name])
    # bf16 configs are for GPUs; parsing them on a CPU machine is still checked, with bf16 off.
    args = ["--config", str(REPO / "configs" / name)]
    if any(f.name == "bf16" for f in dataclasses.fields(cls)):
        args += ["--bf16", "false"]
    if Path(name).name in TRAINING:  # the run and the start model are their own dataclasses, composed with the stage's
        configs = parse(cls, TRAINING[Path(name).name], args)
        assert [type(c) for c in configs] == [RunArguments, ModelArguments, cls]
    else:
        configs = TrlParser((cls,)).parse_args_and_config(args)
    raw = yaml.safe_load((REPO / "configs" / name).read_text())
    for key, value in raw.items():
        if key == "bf16":
            continue
        owner = next((c for c in configs if hasattr(c, key)), None)
        assert owner is not None, f"{name}: {key} is no setting of the stage"  # a typo in a key fails here
        actual = getattr(owner, key)
        # TrainingArguments turns some values into enums or lists; compare what they stand for.
        assert value in (actual, getattr(actual, "value", None)) or actual == [value], key


@pytest.mark.parametrize("name", sorted(OTHER_CONFIGS))
def test_pipeline_yaml_parses(name):
    from pipeline.conductor.config import OPTIONAL, STAGES, PipelineConfig

    config = PipelineConfig.from_yaml(REPO / "configs" / name)
    named = set(yaml.safe_load((REPO / "configs" / name).read_text())["stages"])
    # The YAML names every stage the conductor runs (a new stage needs its place here), and the optional ones it
    # names are the only ones the conductor adds.
    assert set(STAGES) - set(OPTIONAL) <= named, sorted(set(STAGES) - set(OPTIONAL) - named)
    assert config.enabled == [stage for stage in STAGES if stage in named]
    for stage_name, stage in config.stages.items():
        if stage.config:  # every stage config it names is one of the configs tested above
            assert str(Path(stage.config).relative_to("configs")) in STAGE_CONFIGS, stage_name


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_yaml_parses(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    ds_file = (config.deepspeed_config or {}).get("deepspeed_config_file")
    if ds_file:
        assert (REPO / ds_file).exists(), f"{path.name} points at a missing {ds_file}"


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "deepspeed").glob("*.json")), ids=lambda p: p.name)
def test_deepspeed_json_parses(path):
    config = json.loads(path.read_text())
    stage = config["zero_optimization"]["stage"]
    assert path.stem == f"zero{stage}"
    if stage == 3:
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
