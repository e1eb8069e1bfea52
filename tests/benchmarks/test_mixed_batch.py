"""Mixed-adapter batches on the MiniLM shape (q,v, r = 8, random weights): a batch of 64 samples × 64 tokens in which
sample b uses adapter b mod N, N = 1, 8, 64, 1,024 adapters loaded, against the same batch through one adapter; the
adapter banks also on the shipped glyph U-Net (its 80 attention projections, 64 latents).

Variants, all inference (eval, no grad): SVFit, LoLDU and LoRA adapter banks (`Population.from_adapters`: one stacked
table per layer), our SVFit and LoRA through PEFT's `adapter_names` (N adapters in the PeftModel; N ≤ 64 for SVFit,
whose every added adapter decomposes W again), and PEFT's own LoRA through `adapter_names`. Each test times its
variants round-robin (`interleaved_minima`), so ratios compare like with like; it also reports the bytes each loaded
adapter adds and the bank's load time.
"""

from __future__ import annotations

import time

import pytest
import torch
from bench_utils import interleaved_minima, minilm_shaped
from peft import LoraConfig, get_peft_model

from peft_inits import LoLDUConfig, LoRAConfig, SVFitConfig
from peft_inits.checkpoint import save_adapter
from peft_inits.population import Population

pytestmark = pytest.mark.perf

BATCH, TOKENS, RANK, HIDDEN = 64, 64, 8, 384
TARGETS = ["query", "value"]
OURS = {"svfit": SVFitConfig, "loldu": LoLDUConfig, "lora": LoRAConfig}
NAMES_UP_TO = {"svfit": 64, "lora": 1024, "peft-lora": 1024}  # adapter_names variants, by the adapters they load


def _ours(method: str):
    return get_peft_model(minilm_shaped(), OURS[method](r=RANK, target_modules=TARGETS)).eval()


def _peft_lora():
    return get_peft_model(minilm_shaped(), LoraConfig(r=RANK, target_modules=TARGETS, init_lora_weights=False)).eval()


def _perturb(model, seed: int) -> None:
    """Give the trained tensors of the active adapter new values (a different adapter per seed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))


def _bank_members(build, count: int, folder) -> list:
    """`count` different adapters of the model `build()` makes (one adapter, perturbed per k), saved to `folder`."""
    model = build()
    template = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    directories = []
    for k in range(count):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in template:
                    param.copy_(template[name])
        _perturb(model, k)
        directories.append(save_adapter(model, folder / f"member-{k}"))
    return directories


def _add_bank(steps: dict, memory: dict, load_s: dict, method: str, build, call, per_sample, folder) -> None:
    """The one-adapter baseline and a bank of len(set(per_sample)) … adapters of `method`, as timed steps."""
    one = build()
    _perturb(one, 0)
    steps[f"{method} one adapter"] = lambda: call(one)
    loaded = max(per_sample) + 1
    directories = _bank_members(build, loaded, folder / method)
    model = build()
    start = time.perf_counter()
    bank = Population.from_adapters(model, directories, progress=False)
    load_s[f"{method} bank"] = time.perf_counter() - start
    memory[f"{method} bank"] = sum(p.numel() * p.element_size() for p in bank.parameters()) / loaded

    def bank_step():
        with bank.batch(per_sample):
            call(model)

    steps[f"{method} bank, {loaded} adapters"] = bank_step


def _time_and_report(benchmark, steps, memory, load_s, *, loaded, model_bytes, group, kind, label, budget_s):
    """Round-robin minima of every step, ratios to each method's one adapter, recorded and printed."""
    with torch.no_grad():
        for step in steps.values():
            step()  # warm-up
        best = interleaved_minima(steps, budget_s=budget_s, min_rounds=3)
    one_adapter = {name.split()[0]: seconds for name, seconds in best.items() if "one adapter" in name}
    ratios = {name: s / one_adapter[name.split()[0]] for name, s in best.items() if "one adapter" not in name}
    benchmark.group = group
    benchmark.extra_info.update(kind=kind, loaded=loaded, best_s=best, ratio_to_one_adapter=ratios,
                                bytes_per_adapter=memory, model_bytes=model_bytes, load_s=load_s)  # fmt: skip
    print(f"\n{label}, N = {loaded}:")
    for name, ratio in ratios.items():
        load = load_s.get(name.split(",")[0], 0.0)
        print(f"  {name:42s} {best[name] * 1e3:8.1f} ms  {ratio:5.2f}× one adapter ({load:.1f} s load)")
    for name, size in memory.items():
        print(f"  {name:42s} {size:10.0f} B per adapter ({size * 1024 / model_bytes:.2%} of the model for 1,024)")
    with torch.no_grad():
        benchmark.pedantic(steps[f"svfit bank, {loaded} adapters"], rounds=3, warmup_rounds=0, iterations=1)


def _with_names(build, count: int, add) -> tuple:
    model = build()
    _perturb(model, 0)
    for k in range(1, count):
        add(model, f"a{k}")
        model.set_adapter(f"a{k}")
        _perturb(model, k)
    model.set_adapter("default")
    return model.eval(), ["default", *(f"a{k}" for k in range(1, count))]


def _adapter_bytes(model, names: list[str]) -> int:
    """Bytes of everything the adapters named hold (trained tensors, frozen factors, references)."""
    return sum(t.numel() * t.element_size() for n, t in model.state_dict().items() if any(f".{a}." in n for a in names))


@pytest.mark.parametrize("loaded", [1, 8, 64, 1024])
def test_mixed_batch_against_one_adapter(benchmark, loaded, tmp_path):
    x = torch.randn(BATCH, TOKENS, HIDDEN, generator=torch.Generator().manual_seed(0))
    per_sample = [b % loaded for b in range(BATCH)]
    steps, memory, load_s = {}, {}, {}
    base_bytes = sum(p.numel() * p.element_size() for p in minilm_shaped().parameters())

    for method in OURS:
        _add_bank(steps, memory, load_s, method, lambda m=method: _ours(m), lambda m: m(inputs_embeds=x), per_sample,
                  tmp_path)  # fmt: skip

    def ours_add(method):
        return lambda model, name: model.add_adapter(name, OURS[method](r=RANK, target_modules=TARGETS))

    def peft_add(model, name):
        model.add_adapter(name, LoraConfig(r=RANK, target_modules=TARGETS, init_lora_weights=False))

    variants = {
        "svfit": (lambda: _ours("svfit"), ours_add("svfit")),
        "lora": (lambda: _ours("lora"), ours_add("lora")),
        "peft-lora": (_peft_lora, peft_add),
    }
    peft_one = _peft_lora()
    steps["peft-lora one adapter"] = lambda: peft_one(inputs_embeds=x)
    for variant, (build, add) in variants.items():
        if loaded > NAMES_UP_TO[variant]:
            continue
        start = time.perf_counter()
        model, names = _with_names(build, loaded, add)
        load_s[f"{variant} adapter_names"] = time.perf_counter() - start
        memory[f"{variant} adapter_names"] = _adapter_bytes(model, names) / loaded
        batch_names = [names[k] for k in per_sample]
        steps[f"{variant} adapter_names, {loaded} adapters"] = lambda m=model, n=batch_names: m(
            inputs_embeds=x, adapter_names=n
        )

    _time_and_report(benchmark, steps, memory, load_s, loaded=loaded, model_bytes=base_bytes, budget_s=8.0,
                     group="mixed batch | minilm q,v | 64 × 64 tokens", kind="mixed", label="MiniLM")  # fmt: skip


@pytest.mark.parametrize("method", ["svfit", "loldu"])
def test_bank_of_64_against_one_adapter(benchmark, method, tmp_path):
    """The goal's setting alone, with a longer round-robin: 64 samples, 64 different adapters vs one adapter."""
    x = torch.randn(BATCH, TOKENS, HIDDEN, generator=torch.Generator().manual_seed(0))
    steps: dict = {}
    _add_bank(steps, {}, {}, method, lambda: _ours(method), lambda m: m(inputs_embeds=x), list(range(BATCH)), tmp_path)
    steps = {"one adapter": steps[f"{method} one adapter"], "bank of 64": steps[f"{method} bank, {BATCH} adapters"]}
    bank_step = steps["bank of 64"]
    with torch.no_grad():
        for step in steps.values():
            step()
        best = interleaved_minima(steps, budget_s=60.0, min_rounds=5)
    ratio = best["bank of 64"] / best["one adapter"]
    benchmark.group = "mixed batch | minilm q,v | 64 adapters vs one"
    benchmark.extra_info.update(kind="mixed-64", method=method, best_s=best, ratio_to_one_adapter=ratio)
    print(
        f"\n{method}: bank of 64 {best['bank of 64'] * 1e3:.1f} ms, one adapter {best['one adapter'] * 1e3:.1f} ms, "
        f"{ratio:.3f}×"
    )
    with torch.no_grad():
        benchmark.pedantic(bank_step, rounds=3, warmup_rounds=0, iterations=1)


def _glyph_unet():
    from diffusers import UNet2DConditionModel

    from peft_inits.glyph.assets import GLYPH_T2I

    return UNet2DConditionModel.from_pretrained(GLYPH_T2I / "unet", torch_dtype=torch.float32).eval()


UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the 80 attention projections of the glyph U-Net


@pytest.mark.parametrize("loaded", [1, 64, 1024])
def test_glyph_unet_bank_against_one_adapter(benchmark, loaded, tmp_path):
    """The shipped glyph U-Net (8×8×4 latents, MiniLM context): 64 samples, sample b through adapter b mod N."""
    g = torch.Generator().manual_seed(0)
    inputs = {
        "sample": torch.randn(BATCH, 4, 8, 8, generator=g),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(BATCH, 8, 384, generator=g),
    }
    per_sample = [b % loaded for b in range(BATCH)]
    steps, memory, load_s = {}, {}, {}
    base_bytes = sum(p.numel() * p.element_size() for p in _glyph_unet().parameters())
    for method in OURS:

        def build(method=method):
            return get_peft_model(_glyph_unet(), OURS[method](r=RANK, target_modules=UNET_TARGETS)).eval()

        _add_bank(steps, memory, load_s, method, build, lambda m: m(**inputs), per_sample, tmp_path)
    _time_and_report(benchmark, steps, memory, load_s, loaded=loaded, model_bytes=base_bytes, budget_s=20.0,
                     group="mixed batch | glyph U-Net attention | 64 samples", kind="mixed-unet",
                     label="glyph U-Net")  # fmt: skip
