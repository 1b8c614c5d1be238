"""Model cards written from the shipped checkpoints alone (issue 27: every card number traces to a file)."""

import re

import torch

from benchmarks import export_models
from benchmarks.export_models import ROOT, UNRECORDED_FIRST_STAGE, _card_finetune


def test_card_of_a_shipped_predictor_without_its_run_folders():
    shipped = ROOT / "src" / "crysdiff" / "models" / "formation_energy_per_atom.ckpt"
    payload = torch.load(shipped, weights_only=True)
    card = _card_finetune(shipped, payload, None, None, continued=True)
    metrics, training = payload["metrics"], payload["training"]
    assert f"MAE {metrics['mae']:.4f} eV/atom" in card
    assert f"scale of {payload['normalizer']['interval_scale']:.3f}" in card
    assert f"{training['epochs']} epochs / {training['steps']:,} steps, {training['seconds'] / 60:.1f} min" in card
    # trained on canonical cells: train_default_models.sh's one finetune_canonical stage
    assert payload["config"]["data"]["cell"]["canonical"]
    assert UNRECORDED_FIRST_STAGE not in card and "min of fine-tuning in all" in card
    assert 'STEPS="finetune_canonical"' in card and "the encoder of `models/pretrained_canonical.ckpt`" in card
    assert f"MAE {metrics['holdout']['mae']:.4f} eV/atom" in card  # the held-out half's figure
    # no per-step curve values: those live only in the (absent) run folders
    curves = next(line for line in card.splitlines() if line.startswith("* **Curves**"))
    assert not re.search(r"\d\.\d", curves)
    # a checkpoint of cells as given, carded alone, is the second stage of the earlier two-stage recipe
    config = dict(payload["config"], data={k: v for k, v in payload["config"]["data"].items() if k != "cell"})
    older = _card_finetune(shipped, dict(payload, config=config), None, None, continued=True)
    assert UNRECORDED_FIRST_STAGE in older and "min of fine-tuning in all" not in older
    assert 'STEPS="finetune continue"' in older and "the encoder of `models/pretrained_pool.ckpt`" in older


def test_committed_cards_are_what_the_checkpoints_give():
    """models/README.md's fine-tuned cards regenerate from the committed checkpoints and results files."""
    committed = (ROOT / "models" / "README.md").read_text()
    for shipped in sorted((ROOT / "src" / "crysdiff" / "models").glob("*.ckpt")):
        card = export_models._card_finetune(shipped, torch.load(shipped, weights_only=True), None, None, continued=True)
        assert card in committed, shipped.name
