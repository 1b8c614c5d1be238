"""Options measured and removed from the code (issue 23): which runs used them, so that their rows
leave the tables and the "Tried and dropped" section (:mod:`.tried`) keeps what they measured."""

from __future__ import annotations

from dataclasses import dataclass

from ..suite_jobs import MODELS, removed_option


@dataclass(frozen=True)
class Dropped:
    """An option as the suite passed it (``option``), what it did, the commits that built and measured
    it (found with ``git log -S search``), and where its runs are: results files whose overrides name it, the
    folder ``archive`` under the results (runs made while it was the default, so their overrides do
    not name it), or, where no results file holds it, ``measured``: what its commit records."""

    option: str
    what: str
    commits: tuple[str, ...]
    search: str
    archive: str = ""
    measured: str = ""


DROPPED = (
    Dropped("head.layers=all", "the head and the learned prior read every layer's pooled atom states, not only the last "
            "layer's (the lever the linear probe pointed at)", ("e43391d",), "layers=all"),
    Dropped("head.composition=true", "the head reads the pooled states plus a mean element embedding of its own "
            "(a composition skip)", ("3b2ade9",), "head.composition"),
    Dropped("head.kind=card_mlp", "a CARD head nonlinear in y_t (an MLP in place of the affine form)", ("fba6ff5",), "card_mlp",
            measured="in no suite part and no results file; never measured against the affine CARD head"),
    Dropped("head.baseline=zero", "the CARD head's output starts at ε̂ = 0 instead of the prior's noise predictor "
            "(the default before 2026-11-29)", ("3b2ade9", "b989fef"), "baseline", archive="card-baseline-zero"),
)
OPTIONS = {d.option: d for d in DROPPED}


def overrides_of(result: dict) -> tuple[str, ...]:
    """The overrides a run was trained with: as its results file records them, else the job table's."""
    settings = result.get("model_settings") or {}
    if "overrides" in settings:
        return tuple(settings["overrides"])
    model = MODELS.get(result.get("model", ""))
    return model.overrides if model else ()


def same_settings(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether two override lists train the same model. A regression head reads no prior: since issue 23
    the suite names ``head.prior=mean`` for it (a learned prior is refused), where older files say nothing."""
    def norm(overrides):
        return set(overrides) - ({"head.prior=mean"} if "head.kind=regression" in overrides else set())
    return norm(a) == norm(b)


def init_of(result: dict) -> str | None:
    """Where a run's encoder started: as its results file records it, else as the job table says."""
    settings = result.get("model_settings") or {}
    if "init" in settings:
        return settings["init"]
    model = MODELS.get(result.get("model", ""))
    return model.init if model else None


def dropped_option(result: dict) -> str | None:
    """The removed option a run was trained with, or ``None``."""
    return next((o for o in overrides_of(result) if o in OPTIONS), None)


def dropped_models(results: list[dict]) -> set[str]:
    """The model columns trained with a removed option: from the results files and the job table."""
    return ({r["model"] for r in results if dropped_option(r)}
            | {name for name in MODELS if removed_option(name)})
