"""Smoke test of an installed peft_inits, as a user gets it: CI runs it in a fresh venv on the built wheel, from a
directory outside the checkout (`python <checkout>/tests/wheel_smoke.py`).

Checks: the package comes from site-packages, not a checkout, with every file git tracks under peft_inits/ (code
and data) and nothing else; every module imports; each registered method wraps a
Linear + Conv2d model, trains a step, saves and reloads through `PeftModel.from_pretrained` to the same outputs; the
shipped glyph model unpacks and samples one image; the `peft-inits` console script lists every command and each
command's --help works. Prints what it checked; exits non-zero on the first failure.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

torch.set_num_threads(1)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def _tiny() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


def installed_outside_a_checkout() -> Path:
    import peft_inits

    location = Path(peft_inits.__file__).resolve().parent
    assert "site-packages" in location.parts, f"peft_inits was imported from {location}, not from the installed wheel"
    return location


def every_tracked_file_installed(location: Path) -> int:
    """The installed package holds exactly the files git tracks under the checkout's peft_inits/ (code and data)."""
    checkout = Path(__file__).resolve().parents[2]
    listing = subprocess.run(
        ["git", "ls-files", "peft_inits"], cwd=checkout, capture_output=True, text=True, check=True
    )
    tracked = {Path(line).relative_to("peft_inits").as_posix() for line in listing.stdout.split()}
    installed = {
        p.relative_to(location).as_posix() for p in location.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }
    missing, extra = tracked - installed, installed - tracked
    assert not missing and not extra, f"the wheel lacks {sorted(missing)} and adds {sorted(extra)}"
    return len(installed)


def import_every_module() -> int:
    import peft_inits

    names = [info.name for info in pkgutil.walk_packages(peft_inits.__path__, "peft_inits.")]
    names = [name for name in names if not name.endswith(".__main__")]  # `python -m` entry points run on import
    for name in names:
        importlib.import_module(name)
    return len(names)


def console_script_runs_every_help() -> list[str]:
    """`peft-inits --help` lists the commands and each command's --help exits 0 (the script the wheel installed)."""
    from peft_inits.cli import COMMANDS

    script = Path(sys.executable).with_name("peft-inits")
    listing = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert all(name in listing for name in COMMANDS), listing
    for name in COMMANDS:
        done = subprocess.run([str(script), name, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "usage:" in done.stdout, f"peft-inits {name} --help: {done.stderr[-2000:]}"
    return list(COMMANDS)


def round_trip_every_method(folder: Path) -> list[str]:
    from peft import PeftModel, get_peft_model

    from peft_inits.registry import methods

    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    target = torch.randn(4, 10, generator=torch.Generator().manual_seed(2))
    names = []
    for method in methods():
        model = get_peft_model(_tiny(), method.config(r=2, target_modules=["conv", "fc"]))
        trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        assert trainable, f"{method.name}: nothing to train"
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        loss = nn.functional.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss), f"{method.name}: non-finite loss"
        moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trainable[n])]
        assert moved, f"{method.name}: the training step changed nothing"
        model.save_pretrained(folder / method.name)
        reloaded = PeftModel.from_pretrained(_tiny(), folder / method.name)
        with torch.no_grad():
            assert torch.allclose(reloaded(x), model(x), atol=1e-6), f"{method.name}: reload changed the outputs"
        names.append(method.name)
    return names


def sample_the_shipped_model(folder: Path) -> tuple[int, ...]:
    from peft_inits.cli.sd import load_pipeline
    from peft_inits.diffusion.sampling import generate
    from peft_inits.glyph.shipped import shipped_model

    pipe = load_pipeline(str(shipped_model(cache_dir=folder)))
    image = generate(pipe, ["a red serif letter a on a brick wall"], [0], steps=8)[0][0]
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 10, "the sampled image is flat"
    return image.size


def main() -> int:
    location = installed_outside_a_checkout()
    print(f"peft_inits from {location}: {every_tracked_file_installed(location)} files, as tracked in the checkout")
    print(f"{import_every_module()} modules import")
    print(f"peft-inits --help and each command's --help: {', '.join(console_script_runs_every_help())}")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"wrap, train a step, save, reload: {', '.join(round_trip_every_method(Path(tmp)))}")
        print(f"shipped glyph model sampled one {'×'.join(map(str, sample_the_shipped_model(Path(tmp))))} image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
