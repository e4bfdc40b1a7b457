"""The cards jaxgpt knows (peak FLOP/s, memory) by the device kinds JAX reports; FLOPs and MFU."""

from __future__ import annotations

import pytest
from conftest import recipe

from jaxgpt import gpus, summary
from jaxgpt.plan import targets


@pytest.mark.parametrize("device_kind, tflops", [
    ("NVIDIA GeForce RTX 4070", 58.3),  # the user's card
    ("NVIDIA GeForce RTX 4070 Ti SUPER", 88.2),
    ("NVIDIA GeForce RTX 4090", 165.2),
    ("NVIDIA GeForce RTX 3090", 71),
    ("NVIDIA GeForce RTX 5090", 209.5),
    ("NVIDIA RTX A6000", 154.8),
    ("NVIDIA RTX 6000 Ada Generation", 364.2),
    ("NVIDIA L4", 121),
    ("NVIDIA L40S", 362.05),
    ("NVIDIA A10", 125),
    ("NVIDIA A40", 149.7),
    ("NVIDIA A800-SXM4-80GB", 312),
    ("NVIDIA A800 80GB PCIe", 312),
    ("NVIDIA A800-SXM4-40GB", 312),
    ("NVIDIA A800 PCIe 40GB", 312),
    ("NVIDIA A800 40GB Active", 312),  # the workstation card: the same chip and clock
    ("NVIDIA H800", 989.5),
    ("NVIDIA H800 PCIe", 756.5),
    ("NVIDIA H20", 148),
    ("NVIDIA H20-3e", 148),
    ("NVIDIA GH200 144G HBM3e", 989.5),
    ("NVIDIA A100-SXM4-80GB", 312),
    ("NVIDIA A100 80GB PCIe", 312),
    ("NVIDIA A100-PCIE-40GB", 312),
    ("NVIDIA H100 80GB HBM3", 989.5),
    ("NVIDIA H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", 835.5),
    ("NVIDIA H200", 989.5),
    ("NVIDIA GH200 480GB", 989.5),
    ("NVIDIA B200", 2250),
    ("TPU v4", 275),
    ("TPU v5 lite", 197),
    ("TPU v5", 459),
    ("TPU v6 lite", 918),
])
def test_peak_of_the_device_kinds_jax_reports(device_kind, tflops):
  assert gpus.peak_flops(device_kind) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("device_kind", [
    "cpu", "NVIDIA GeForce RTX 4090 Laptop GPU", "NVIDIA A10G", "NVIDIA L20", "NVIDIA A30",
    "NVIDIA RTX A1000",
    "NVIDIA A1000", "NVIDIA A100X", "NVIDIA RTX 4000 Ada Generation", "Tesla T4",
    "NVIDIA A100-SXM4-40GB MIG 1g.5gb", "NVIDIA H100 80GB HBM3 MIG 3g.40gb",
    # cut-down cards, not their full namesakes
    "NVIDIA GeForce RTX 4090 D", "NVIDIA GeForce RTX 5090 D", "TPU v4 lite"])
def test_a_device_without_a_sourced_figure_is_unknown(device_kind):
  assert gpus.peak_flops(device_kind) is None
  assert gpus.peak_flops(device_kind, override=1e14) == 1e14


def test_no_entry_is_shadowed_by_an_earlier_one():
  """First match wins: an entry whose own name an earlier entry matches is never reached."""
  for card in gpus.CARDS:
    assert gpus.card(card.name) is card, card.name


@pytest.mark.parametrize("device_kind, gib", [
    ("NVIDIA GeForce RTX 4070", 12), ("NVIDIA GeForce RTX 4070 Ti SUPER", 16),
    ("NVIDIA GeForce RTX 3080", 10), ("NVIDIA A100-SXM4-40GB", 40), ("NVIDIA A100-SXM4-80GB", 80),
    ("NVIDIA H100 80GB HBM3", 81559 / 1024), ("NVIDIA H200", 143771 / 1024),
    ("NVIDIA L40S", 46068 / 1024), ("NVIDIA A10G", 23028 / 1024), ("NVIDIA A40", 46068 / 1024),
    ("NVIDIA L20", 46068 / 1024), ("NVIDIA H800", 81559 / 1024), ("NVIDIA H800 PCIe", 80),
    ("NVIDIA H20", 97871 / 1024), ("NVIDIA H20-3e", 143771 / 1024),
    ("NVIDIA A800-SXM4-80GB", 80), ("NVIDIA A800 80GB PCIe", 80), ("NVIDIA A800-SXM4-40GB", 40),
    ("NVIDIA A800 PCIe 40GB", 40), ("NVIDIA A800 40GB Active", 40),
    ("NVIDIA GH200 144G HBM3e", 144), ("NVIDIA GH200 480GB", 96)])  # nvidia-smi's, where known
def test_memory_of_the_cards_whose_name_says_it(device_kind, gib):
  assert gpus.card(device_kind).memory_gib == gib


@pytest.mark.parametrize("device_kind, card_name", [
    ("NVIDIA A10", "NVIDIA A10"), ("NVIDIA A10G", "NVIDIA A10G"),
    ("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB"), ("NVIDIA A100 80GB PCIe", "A100"),
    ("NVIDIA A800-SXM4-80GB", "A800-SXM4-80GB"), ("NVIDIA A800 80GB PCIe", "A800"),
    ("NVIDIA A800-SXM4-40GB", "A800-SXM4-40GB"), ("NVIDIA A800-PCIE-40GB", "A800 PCIe 40GB"),
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H800", "H800"), ("NVIDIA H800 PCIe", "H800 PCIe"),
    ("NVIDIA H20", "H20"), ("NVIDIA H20-3e", "H20-3e"), ("NVIDIA H200", "H200"),
    ("NVIDIA GH200 480GB", "GH200"), ("NVIDIA GH200 144G HBM3e", "GH200 144G"),
    ("NVIDIA L4", "NVIDIA L4"), ("NVIDIA L20", "NVIDIA L20"), ("NVIDIA L40", "L40"),
    ("NVIDIA A40", "NVIDIA A40")])
def test_neighbouring_names_are_each_their_own_card(device_kind, card_name):
  """A10 vs A10G, A100 vs A800, H100 vs H800, H20 vs H200 vs H20-3e: no name takes another's."""
  assert gpus.card(device_kind).name == card_name


def test_a_card_sold_with_two_memory_sizes_has_none():
  assert gpus.card("NVIDIA GeForce RTX 4060 Ti").memory_gib is None  # 8 or 16 GB


@pytest.mark.parametrize("name", ["A100-40GB", "A100_40GB", "A100 PCIe 40GB", "a100-sxm4-40gb",
                                  "A100 40GB PCIe"])
def test_a_40gb_a100_as_a_user_spells_it_is_never_the_80gb_one(name):
  """plan --device=A100-40GB said a need of 30 to 60 GiB fits: '-' or '_' ended the word 'A100'."""
  assert targets.card(name).memory_gib == 40


def test_a_card_named_without_its_spaces_is_that_card():
  """plan --device=RTX4090 was not a card jaxgpt knows, though 'RTX 4090' was."""
  for card in gpus.CARDS:
    assert gpus.card(card.name.replace(" ", "")) is card, card.name
  assert targets.card("RTX4090").name == "RTX 4090"
  assert targets.card("rtx4090d").name == "RTX 4090 D"
  assert [targets.card(n).name for n in ("A10", "A10G", "A100")] == [
      "NVIDIA A10", "NVIDIA A10G", "A100"]


def test_flops_per_token_is_nanogpts():
  c = recipe("fineweb_40m")
  n = 40_560_000
  assert summary.flops_per_token(n, c.n_layer, c.n_head, c.n_embd, c.block_size) == (
      6 * n + 12 * 12 * 6 * 64 * 1024)
  assert summary.mfu(1000.0, 1e9, 1e13, 2) == pytest.approx(1000 * 1e9 / 2e13)
  assert summary.mfu(1000.0, 1e9, None, 1) is None


def test_every_gpu_target_is_one_card_of_the_table():
  """A target's peak and memory are its card's entry: what JAX reports on it finds the same."""
  for t in targets.TARGETS:
    card = gpus.card(t.device_kind)
    assert card.name == t.card and card.peak_flops and card.memory_gib, t
    assert targets.target(t.card) is t
    text = targets.config_text(t, t.memory_bytes)
    assert f"device_memory_size: {int(card.memory_gib * 2**30)}" in text
    assert f'device_description_str: "{t.device_kind}"' in text


@pytest.mark.parametrize("name,compiled_as", [
    ("A100", "A100-SXM4-80GB"), ("A100 80GB", "A100-SXM4-80GB"), ("A100-40GB", "A100-SXM4-40GB"),
    ("NVIDIA A100-PCIE-40GB", "A100-SXM4-40GB"), ("NVIDIA A100 80GB PCIe", "A100-SXM4-80GB"),
    # an A800 or H800 is its A100's or H100's chip and memory
    ("NVIDIA A800-SXM4-80GB", "A100-SXM4-80GB"), ("A800", "A100-SXM4-80GB"),
    ("A800-40GB", "A100-SXM4-40GB"), ("NVIDIA A800-SXM4-40GB", "A100-SXM4-40GB"),
    ("NVIDIA A800-PCIE-40GB", "A100-SXM4-40GB"), ("NVIDIA A800 40GB Active", "A100-SXM4-40GB"),
    ("NVIDIA H800", "H100"), ("NVIDIA H800 PCIe", "H100 PCIe")])
def test_a_card_named_for_short_or_of_a_target_s_chip_compiles_for_that_chip(name, compiled_as):
  """README's `--device=H100` pattern, for an A100 named for short or PCIe, an A800 or an
  H800: not the CPU's estimate for want of a name."""
  t = targets.target(name)
  assert t.card == compiled_as
  assert t.memory_bytes == int(targets.card(name).memory_gib * 2**30)  # the named card's


@pytest.mark.parametrize("name,card_name", [("L4", "NVIDIA L4"), ("A10", "NVIDIA A10"),
                                            ("A100", "A100"), ("H100", "H100"),
                                            ("NVIDIA H100 80GB HBM3", "H100")])
def test_a_card_named_for_short_is_the_card_jax_reports(name, card_name):
  """plan --device takes what README lists ('L4', 'A100'); JAX's device kinds say 'NVIDIA L4'."""
  assert targets.card(name).name == card_name
  assert targets.card("RTX 9999") is None


def test_the_runs_mfu_divides_by_the_peak_of_every_device():
  s = summary.summarize(recipe("fineweb_40m"), n_devices=4, device_kind="NVIDIA H100 80GB HBM3")
  assert s.peak_flops == 989.5e12 and s.n_devices == 4
  assert s.mfu(1e6) == pytest.approx(1e6 * s.flops_per_token / (4 * 989.5e12))


# The user's peak wins over the table's, and gives a card the table lacks its MFU.
def test_the_configs_peak_flops_sets_the_runs_mfu():
  config = recipe("fineweb_40m")
  config.peak_flops = 5e14
  for kind in ("cpu", "Mystery GPU", "NVIDIA H100 80GB HBM3"):  # it wins over the table too
    s = summary.summarize(config, device_kind=kind)
    assert s.peak_flops == 5e14, kind
    assert s.mfu(1e6) == pytest.approx(1e6 * s.flops_per_token / 5e14)


@pytest.mark.parametrize("device_kind", ["NVIDIA GH100", "NVIDIA XA100 80GB"])
def test_a_name_inside_a_longer_word_is_not_the_card(device_kind):
  assert gpus.card(device_kind) is None
