"""The one-analysis API: an analysis is a pure function of a mutant's view, run by one shared loop.

An analysis (patching, IG, circuits, ...) is a module that defines

* a settings type (:mod:`esmsae.config.settings`), the science it depends on;
* a typed per-mutant result, and a function ``run(view, settings, context) -> result``
  that computes it from the mutant's :class:`~esmsae.model.view.MutantView` alone (the
  engine owns batching, so the function never sees a batch size or a device);
* how a job's results are written (one file format per result type, read back
  through the same type), and a one-line summary of a result for the log;

and publishes them as one :class:`Analysis`. :func:`analyse` runs an analysis over
a protein's mutants with resume, and :func:`esmsae.analyses.job.run_analysis` is the
whole job (model, SAE, mutants, work folder, outputs). Adding an analysis is one
module, one rule and one script of three lines.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from esmsae.inputs.mutations import Mutant
from esmsae.model.splice import Splice
from esmsae.model.view import MutantView, WTView
from esmsae.pipeline.resume import WorkFolder, run_items

log = logging.getLogger(__name__)


S = TypeVar("S")


R = TypeVar("R")


@dataclass(frozen=True)
class LayerMeta:
    """What every output of a per-(protein, layer) job records beside its settings."""

    protein: str
    layer: int
    k: int       # the SAE's TopK k
    d_sae: int
    activations: str  # the forward the SAE reads (config sae.activations), recorded in every output
    wt_seq: str = ""


@dataclass(frozen=True)
class Analysis(Generic[S, R]):
    """One analysis, as the shared job runs it: per mutant, or per unit of a whole protein.

    `context`, when given, reads the job's extra inputs (those beside the checkpoint,
    the SAE and the scores, e.g. IG results for circuits) once per job, given the
    inputs, the mutants and the settings; `run` gets what it returns.

    By default `run` gets each selected mutant's :class:`~esmsae.model.view.MutantView`. An
    analysis of the whole protein instead names its `units` (from the context and settings, e.g.
    the feature sets to ablate) and `run` gets a :class:`~esmsae.model.view.WTView` per unit;
    either way each result is one resume piece and the engine owns the batching.
    """

    rule: str                                                    # the rule that runs it; names its work
    settings: type[S]
    run: Callable[[MutantView | WTView, S, Any], R]
    write: Callable[[list[R], Mapping[str, Path], S, LayerMeta], None]
    summary: Callable[[R], str]
    context: Callable[[Mapping[str, Path], list[Mutant], S], Any] | None = None
    units: Callable[[Any, S], list[str]] | None = None           # per-protein analyses: the units of work


def analyse(analysis: Analysis[S, R], splice: Splice | Mapping[str, Splice], mutants: list[Mutant], settings: S, *,
            context: Any = None, work: WorkFolder | None = None) -> list[R]:
    """`analysis` on every mutant, each result kept in `work` as soon as it is done.

    `splice` is the engine, or for a sequence longer than the model's context each mutant's own (by name:
    the splice of its window, METHOD.md "Long sequences"). The mutants' own layer-ℓ states come from one
    batched forward per splice (always of all its mutants, so a resumed job computes exactly what an
    uninterrupted one would).
    """
    if analysis.units is not None:
        if not isinstance(splice, Splice):
            raise ValueError(f"{analysis.rule} analyses a whole protein: it needs one splice of the whole sequence")
        return analyse_units(analysis, splice, analysis.units(context, settings), settings, context=context, work=work)
    if not mutants:
        return []
    if isinstance(splice, Splice):
        splices = {m.name: splice for m in mutants}
    else:
        missing = [m.name for m in mutants if m.name not in splice]
        if missing:
            raise ValueError(f"{analysis.rule}: no splice for {missing[:5]}")
        splices = {m.name: splice[m.name] for m in mutants}
    states = {}
    for engine in {id(s): s for s in splices.values()}.values():
        group = [m for m in mutants if splices[m.name] is engine]
        for m, h in zip(group, engine.hidden([m.apply(engine.wt_seq) for m in group]), strict=True):
            states[m.name] = h
    space = getattr(settings, "space", "latent")  # analyses that never touch the SAE's code have none

    def one(index: int) -> R:
        mutant = mutants[index]
        engine = splices[mutant.name]
        view = engine.view(mutant, states[mutant.name], space)
        result = analysis.run(view, settings, context)
        log.info("%s L%d %s: %s", engine.protein, engine.layer, mutant.name, analysis.summary(result))
        return result

    first = next(iter(splices.values()))
    return run_items([m.name for m in mutants], one, work, desc=f"{analysis.rule} {first.protein} L{first.layer}")


def analyse_units(analysis: Analysis[S, R], splice: Splice, units: list[str], settings: S, *, context: Any = None,
                  work: WorkFolder | None = None) -> list[R]:
    """A per-protein `analysis` on each of its `units`, each result kept in `work` as soon as it is done."""
    def one(index: int) -> R:
        result = analysis.run(WTView(engine=splice, unit=units[index]), settings, context)
        log.info("%s L%d %s: %s", splice.protein, splice.layer, units[index], analysis.summary(result))
        return result

    return run_items(list(units), one, work, desc=f"{analysis.rule} {splice.protein} L{splice.layer}")
