"""The messages a newcomer gets for the usual mistakes: each names the problem and the valid choices."""

from __future__ import annotations

import logging

import pytest

from peft_inits.cli import demo
from peft_inits.cli import sd as runner
from peft_inits.diffusion.quiet import silence_image_processor_fallback


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "no such folder"),
        (lambda tmp: tmp, "no config.json"),
        (lambda tmp: (tmp / "config.json").write_text("{}") and tmp, "no tokenizer files"),
    ],
)
def test_demo_refuses_a_model_folder_it_cannot_use(tmp_path, make, message):
    folder = make(tmp_path)
    with pytest.raises(SystemExit, match=f"--model {folder}: {message}.*omit --model"):
        demo.main(demo.parse_args(["--model", str(folder)]))


def test_demo_rank_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.parse_args(["--r", "0"])
    assert exit_info.value.code == 2
    assert "--r: must be an int >= 1, got 0" in capsys.readouterr().err


def test_sd_train_names_the_valid_data_values():
    args = runner.parse_args(["train", "--data", "subjetc"])
    with pytest.raises(
        FileNotFoundError, match=r"--data 'subjetc' does not exist: pass an embedded set \(subject, style\)"
    ):
        runner.main(args)  # refused before any model is loaded


def test_sd_train_accepts_the_embedded_sets_and_a_folder(tmp_path):
    for data in ("subject", "style", str(tmp_path)):
        runner.check_data(data)


def test_only_the_torchvision_fallback_note_is_silenced(caplog):
    silence_image_processor_fallback()
    silence_image_processor_fallback()  # idempotent
    logger = logging.getLogger("transformers.utils.import_utils")
    assert len(logger.filters) == len({type(f) for f in logger.filters})
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"
        )
        logger.warning("something the user must see")
    assert [r.getMessage() for r in caplog.records] == ["something the user must see"]
