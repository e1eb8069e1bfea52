"""The dataclass → flags bridge (`training.fields`, `cli.flags`): every settings dataclass declares its own flags."""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass

import pytest

from peft_inits.cli.flags import add_settings_flags, settings_from_args
from peft_inits.training.fields import setting


def _pairs(text: str) -> tuple[tuple[str, int], ...]:
    return tuple((k, int(v)) for k, v in (item.split("=") for item in text.split(",")))


@dataclass(frozen=True)
class Example:
    steps: int = setting(10, "optimizer steps")
    lr: float | None = None
    name: str = setting("a", choices=("a", "b"))
    verbose: bool = True
    seeds: tuple[int, ...] = (0, 1)
    words: tuple[str, ...] | None = None
    images: int = setting(4, flag="--num-images")
    pairs: tuple[tuple[str, int], ...] = setting((), parse=_pairs)


def _parse(argv: list[str], **kwargs) -> Example:
    parser = argparse.ArgumentParser()
    add_settings_flags(parser, Example, **kwargs)
    return settings_from_args(Example, parser.parse_args(argv))


def test_no_flags_give_the_dataclass_defaults():
    assert _parse([]) == Example()


def test_every_kind_of_field_parses_to_its_type():
    argv = "--steps 3 --lr 0.5 --name b --no-verbose --seeds 4,5,6 --words x,y --num-images 9 --pairs p=1,q=2"
    want = Example(3, 0.5, "b", False, (4, 5, 6), ("x", "y"), 9, (("p", 1), ("q", 2)))
    assert _parse(shlex.split(argv)) == want


def test_defaults_skip_and_only():
    parser = argparse.ArgumentParser()
    add_settings_flags(parser, Example, defaults=Example(steps=99), skip=("lr",))
    args = parser.parse_args([])
    assert args.steps == 99 and not hasattr(args, "lr")
    assert settings_from_args(Example, args, seeds=(7,)) == Example(steps=99, seeds=(7,))
    parser = argparse.ArgumentParser()
    add_settings_flags(parser, Example, only=("steps",))
    assert vars(parser.parse_args([])) == {"steps": 10}
    with pytest.raises(ValueError, match="no field"):
        add_settings_flags(argparse.ArgumentParser(), Example, only=("step",))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "x"], "invalid"),
        (["--name", "c"], "invalid choice"),
        (["--seeds", "1,a"], "comma-separated int"),
    ],
)
def test_bad_values_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit):
        _parse(argv)
    assert message in capsys.readouterr().err


def test_a_type_without_a_flag_form_is_refused_at_declaration():
    @dataclass
    class Odd:
        mapping: dict = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="metadata\\['parse'\\]"):
        add_settings_flags(argparse.ArgumentParser(), Odd)


def test_runner_commands_default_to_their_settings_dataclasses():
    from peft_inits.cli.sd import parse_args
    from peft_inits.generation.evaluation import EvalSettings
    from peft_inits.generation.generator import GeneratorSettings
    from peft_inits.glyph.pretrain import PretrainSettings
    from peft_inits.studies.ablation import AblationSettings

    assert settings_from_args(AblationSettings, parse_args(["ablation"])) == AblationSettings()
    assert settings_from_args(PretrainSettings, parse_args(["pretrain"])) == PretrainSettings()
    generator = parse_args(["train-generator", "--dataset", "d", "--output-dir", "o"])
    assert settings_from_args(GeneratorSettings, generator) == GeneratorSettings()
    evaluation = parse_args(["generation-eval", "--dataset", "d", "--generator", "g", "--output-dir", "o"])
    assert settings_from_args(EvalSettings, evaluation) == EvalSettings()
    ablation = parse_args(["ablation", "--methods", "svfit,loldu", "--lrs", "svfit=0.2", "--num-images", "8"])
    assert settings_from_args(AblationSettings, ablation) == AblationSettings(
        methods=("svfit", "loldu"), lrs=(("svfit", 0.2),), images=8
    )


def test_config_files_and_sweeps_read_values_with_the_flags_parsers(tmp_path, capsys):
    from peft_inits.cli import encoder
    from peft_inits.studies.variants import build_variants
    from peft_inits.training.settings import AdapterSettings

    toml = tmp_path / "run.toml"
    toml.write_text(
        'method = "loldu"\nr = "full"\nblocks = {"0-1" = 4}\ntarget-modules = ["query", "value"]\n'
        'train_sigma = "yes"\nsteps = "3"\nlr = 1\nmodule-kinds = "q,v"\n'
    )
    argv = ["--method", "loldu", "--r", "full", "--blocks", '{"0-1": 4}', "--target-modules", "query,value"]
    flags = encoder.parse_args([*argv, "--train-sigma", "--steps", "3", "--lr", "1", "--module-kinds", "q,v"])
    from_file = encoder.parse_args(["--config", str(toml)])
    assert vars(from_file) == {**vars(flags), "config": str(toml)}
    assert (flags.r, flags.blocks, flags.train_sigma, flags.steps, flags.lr) == ("full", {"0-1": 4}, True, 3, 1.0)
    assert encoder.adapter_settings(from_file) == encoder.adapter_settings(flags)

    rows = build_variants(["loldu"], AdapterSettings(), sweeps=["blocks=0-1+2,3", "train_sigma=yes,0"])
    assert [(v.adapter.blocks, v.adapter.options) for v in rows] == [
        (["0-1", "2"], {"train_sigma": True}),
        (["0-1", "2"], {"train_sigma": False}),
        (["3"], {"train_sigma": True}),
        (["3"], {"train_sigma": False}),
    ]
    for text, message in [
        ('steps = "x"', "steps: cannot read 'x' as int"),
        ('decompose-dtype = "float16"', "decompose_dtype must be one of float32, float64, got 'float16'"),
        ("r = 0", "r: rank r must be an integer >= 1 or 'full', got 0"),
        ('blocks = "{0"', "blocks: --blocks is not valid JSON"),
    ]:
        toml.write_text(text + "\n")
        with pytest.raises(SystemExit):
            encoder.parse_args(["--config", str(toml)])
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="alpha: cannot read 'big' as float"):
        build_variants(["lora"], AdapterSettings(), overrides=["alpha=big"])
