"""Which columns a table shows, read from the suite's job table (``benchmarks/suite_jobs.py``): the
models of a part and of the parts shown with it, each crysdiff head with its from-scratch twin, and
the labels of the model columns."""

from __future__ import annotations

from ..suite_jobs import EXPERIMENTS, LONGPRE_MODELS, MODELS, SHOWN_WITH

# what each head setting is called in the tables (keyed by the overrides the suite passes, not by a column name)
HEAD_WORDS = {("head.kind=card", "head.prior=mean"): "the paper's CARD head, constant prior",
              ("head.kind=gaussian", "head.prior=learned"): "Gaussian head, learned prior"}


def shown_models(part: str, peers: bool = False) -> list[str]:
    """The model columns of ``part`` and of the parts the report shows with it, in the job table's order."""
    parts = [part, *(p for p, shown in SHOWN_WITH.items() if shown == part)]
    names = [m for p in parts for m in (*EXPERIMENTS[p].models, *(EXPERIMENTS[p].peers if peers else ()))]
    return list(dict.fromkeys(names))


def twin(model: str, init: str | None) -> str | None:
    """The column training the same head as ``model`` but started from ``init`` (``None``: from scratch)."""
    same = [name for name, m in MODELS.items() if m.overrides == MODELS[model].overrides and m.init == init
            and not m.peer and not m.evaluate_only]
    return same[0] if same else None


def crysdiff_heads(part: str = "table1") -> tuple[tuple[str, str, str], ...]:
    """(pre-trained column, its from-scratch twin, the head's name) for each diffusion head of ``part``."""
    names = shown_models(part)
    return tuple((m, twin(m, None), HEAD_WORDS.get(MODELS[m].overrides, ", ".join(MODELS[m].overrides)))
                 for m in names if MODELS[m].init == "pool" and twin(m, None) in names)


def own_columns(part: str = "table1") -> tuple[str, ...]:
    """crysdiff's columns of ``part``: each head beside its twin, then the other non-peer columns."""
    pairs = [name for own, scratch, _ in crysdiff_heads(part) for name in (own, scratch)]
    return tuple(dict.fromkeys([*pairs, *shown_models(part)]))


def model_label(name: str) -> str:
    return MODELS[name].label if name in MODELS else f"{name} (peer)"


# the full model: the column Fig. 5's ablations and Table 1's reliability diagram are about (the paper's head)
PAPER_COLUMN = EXPERIMENTS["ablation"].models[0]

# the regression head on the pool model, beside each diffusion head in Table 1
REGRESSION_COLUMN = next(m for m in shown_models("table1")
                         if "head.kind=regression" in MODELS[m].overrides and MODELS[m].init == "pool")

# the longest pre-training's head set beside the same head from the pool model and from scratch
LONGPRE_BASE = (twin(LONGPRE_MODELS[-1], "pool"), twin(LONGPRE_MODELS[-1], None))
