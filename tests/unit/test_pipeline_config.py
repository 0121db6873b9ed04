"""Pipeline configurations: what a good TOML file gives, and an exact error for each mistake."""

from __future__ import annotations

import pytest

from edgefleet.core.errors import Code, InvalidArgument
from edgefleet.server.pipelines.config import check_config, parse_toml

pytest.importorskip("pydantic", reason="rollout stages are checked with the server's schemas")

GOOD = """
[model]
name = "digits"

[source]
model = "/models/digits.onnx"
framework = "onnx"
inputs = ["X:1x64:float32"]
validation = "/data/val.npz"

[compile]
targets = ["linux-x86_64"]
benchmark_seconds = 0.2

[deploy]
fleets = ["prod"]

[twin]
fleet = "twins"
workdir = "/srv/twins"
min_accuracy = 0.9
max_p99_ms = 50

[shadow]
fleet = "prod"
duration_seconds = 30

[approval]
mode = "auto"

[rollout]
health_gate = { MaxErrorRate = 0.1 }
stages = [
  { StageName = "canary", DeviceSelectionConfig = { DeviceSubsetType = "PERCENTAGE", Percentage = 50 } },
  { StageName = "rest", DeviceSelectionConfig = { DeviceSubsetType = "PERCENTAGE", Percentage = 100 } },
]

[webhook]
url = "http://127.0.0.1:9/hook"
"""


def test_a_full_configuration_round_trips() -> None:
    config = parse_toml(GOOD)
    assert config.steps() == ["compile", "package", "twin", "shadow", "approval", "rollout"]
    assert config.twin is not None and config.twin.min_accuracy == 0.9 and config.twin.max_p99_ms == 50.0
    assert config.approval == "auto" and config.fleets == ("prod",)
    assert check_config(config.to_dict()) == config


def test_the_smallest_configuration_packages_and_waits_for_approval() -> None:
    config = parse_toml('[model]\nname = "m"\n[source]\nmodel = "/m.onnx"\nframework = "onnx"\n')
    assert config.steps() == ["package", "approval"] and config.approval == "manual"


def _edit(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[model\n", "not valid TOML"),
        ('[source]\nmodel = "/m.onnx"\nframework = "onnx"\n', r"needs \[model\]"),
        (_edit('name = "digits"', 'name = "no spaces allowed"'), "model.name"),
        (_edit('model = "/models/digits.onnx"', 'model = "digits.onnx"'), "source.model .* absolute path"),
        (_edit('framework = "onnx"', 'framework = "caffe"'), "source.framework 'caffe' is not known"),
        (
            _edit('validation = "/data/val.npz"', 'validation = "/data/val.csv"'),
            r"source.validation .* \.npz",
        ),
        (_edit('targets = ["linux-x86_64"]', 'targets = ["vax"]'), "compile.targets"),
        (
            _edit("min_accuracy = 0.9", "min_accuracy = 1.5"),
            "twin.min_accuracy must be at least 0 and at most 1",
        ),
        (_edit("max_p99_ms = 50", "max_p99_ms = 0"), "twin.max_p99_ms must be above 0"),
        (_edit("max_p99_ms = 50", "max_p99_ms = 50\nmax_p99 = 3"), r"twin: unknown key\(s\) max_p99"),
        (_edit('fleet = "twins"', 'fleet = "prod"'), "twin.fleet 'prod' is also a production fleet"),
        (_edit('mode = "auto"', 'mode = "sometimes"'), "approval.mode 'sometimes'"),
        (_edit("[webhook]", "[hooks]"), r"unknown table\(s\) hooks"),
        (_edit('url = "http://127.0.0.1:9/hook"', 'url = "ftp://x/hook"'), "webhook.url"),
        (
            _edit('DeviceSubsetType = "PERCENTAGE", Percentage = 100', 'DeviceSubsetType = "SOME"'),
            "rollout.stages: stage 'rest': DeviceSubsetType",
        ),
        (_edit("Percentage = 50", "Percentage = 500"), "PERCENTAGE needs Percentage in 1-100"),
        (_edit('StageName = "rest", ', ""), "rollout.Stages.1.StageName: Field required"),
        (_edit('StageName = "rest"', 'StageName = "canary"'), "StageName is listed twice"),
        (_edit("MaxErrorRate = 0.1", "MaxErrorRate = 7"), "MaxErrorRate must be a fraction"),
        (_edit('fleets = ["prod"]', "fleets = []"), r"\[rollout\] needs deploy.fleets"),
        (
            _edit('validation = "/data/val.npz"\n', ""),
            "twin.min_accuracy and twin.min_agreement need source.validation",
        ),
    ],
)
def test_each_mistake_is_named(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as info:
        parse_toml(text)
    assert info.value.code == Code.INVALID_ARGUMENT
