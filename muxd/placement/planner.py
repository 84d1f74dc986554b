"""MuxServe's placement (Duan et al. 2024, §3.2 and Algorithm 1): enumerate device groupings, place greedily.

For every way to split each node's devices into meshes of 1, 2, 4 or 8
(``cluster.node_partitions``; nodes are interchangeable, so a grouping is a
multiset of node splits):

1. every model gets, per mesh size it fits, a *candidate*: the smallest
   decode share that carries its rate within its SLO alone on such a mesh
   (else the share that serves it best);
2. models are taken by computation demand, rate × GPU-seconds per request,
   heaviest first (ties by name);
3. each goes to the mesh where the estimated goodput (requests/s within
   SLO, ``estimate.py``) gains most, if the mesh has compute (decode shares
   add up to at most 1) and memory (weights + reserves + one longest
   request per model ≤ the mesh's memory) for it; ties go to the less
   loaded mesh, then the smaller, then the first;
4. a repair pass swaps a model left out for a placed one where the mesh
   gains by it (the greedy gives room to a model that gains nothing);
5. a model still left out is squeezed in where goodput gains most: at its
   smallest share, room made by lowering one member's share (served below
   its rate rather than not at all; a one-device machine has nowhere else).

The grouping whose plan places the most models, then squeezes the fewest, then has the most goodput,
then throughput, then the least rate-weighted latency, wins; ties keep the
first in enumeration order. The same inputs give the same plan. With
``objective="throughput"`` (MuxServe's own: its placement estimates
throughput) throughput comes before goodput: under overload, where no plan
holds every SLO, it serves more requests, later.

Where muxd departs from the reference: sizes and KV bytes from configs
(GQA-aware, ``model_spec.py``), the workload's length distribution rather
than two means, SLO attainment in the objective, the pool's real page size,
and no 20 % compute overload of a mesh.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from muxd.errors import ConfigError
from muxd.placement.cluster import MESH_SIZES, Cluster, node_partitions
from muxd.placement.cost_model import CostModel
from muxd.placement.estimate import Estimator, Lengths, UnitEstimate
from muxd.placement.model_spec import ModelSpec
from muxd.placement.plan import ModelPlacement, Plan, Unit

EPS = 1e-9
OBJECTIVES = ("goodput", "throughput")  # what picks the grouping: requests/s within SLO, or requests/s served


@dataclass(frozen=True)
class Candidate:
    """A model alone on a mesh of ``tp`` devices with decode ``share``: does it carry its rate within SLO?"""

    tp: int
    share: float
    meets: bool
    served_rps: float


@dataclass
class _Mesh:
    node: int
    gpus: tuple[int, ...]
    members: tuple[tuple[ModelSpec, float], ...] = ()
    estimate: UnitEstimate | None = None
    cpu: bool = False

    @property
    def size(self) -> int:
        return len(self.gpus)

    @property
    def label(self) -> str:
        if self.cpu:
            return "the CPU"
        first, last = self.gpus[0], self.gpus[-1]
        return f"node{self.node}/gpu{first}" + (f"-{last}" if last != first else "")

    @property
    def share_used(self) -> float:
        return sum(s for _, s in self.members)


@dataclass(frozen=True)
class _Decision:
    spec: ModelSpec
    mesh: int  # index into the grouping's meshes
    beside: tuple[str, ...]  # models already on that mesh
    gain: float
    options: int  # meshes that could take it
    runner_up: tuple[str, float] | None  # the next best mesh and its gain
    replaced: str | None = None  # the model it displaced (the repair pass)
    squeezed: float | None = None  # the share it got, where it is less than its candidate's
    lowered: tuple[tuple[str, float], ...] = ()  # members whose share was lowered to make room, and to what


@dataclass
class _Result:
    meshes: list[_Mesh]
    decisions: list[_Decision]
    unplaced: list[ModelSpec]

    def score(self, objective: str = "goodput") -> tuple[float, ...]:
        """Models placed, then fewest squeezed in, then goodput and throughput (the objective's first), then
        less latency. A squeeze is the last resort: a plan that places every model at its candidate share wins."""
        units = [m.estimate for m in self.meshes if m.estimate is not None]
        latency = sum(e.spec.rate * e.mean_latency_s for u in units for e in u.models)
        goodput, served = round(sum(u.goodput for u in units), 9), round(sum(u.served for u in units), 9)
        first, second = (goodput, served) if objective == "goodput" else (served, goodput)
        squeezed = sum(d.squeezed is not None or bool(d.lowered) for d in self.decisions)
        return (-len(self.unplaced), -squeezed, first, second, -round(latency, 9))


class Planner:
    """Plans ``models`` onto ``cluster`` with ``costs`` (see the module's docstring)."""

    def __init__(self, costs: CostModel, cluster: Cluster, lengths: Lengths | None = None, *,
                 mesh_sizes: Sequence[int] = MESH_SIZES, objective: str = "goodput",
                 **estimator_options: float) -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
        self.costs, self.cluster, self.objective = costs, cluster, objective
        self.mesh_sizes = tuple(s for s in sorted(mesh_sizes) if s <= cluster.per_node)
        self.estimator = Estimator(costs, cluster.device, lengths, **estimator_options)
        self._cpu = cluster.device.kind.lower().startswith("cpu")

    # -- candidates and order -------------------------------------------------
    def candidates(self, spec: ModelSpec) -> dict[int, Candidate]:
        """Per mesh size the model fits alone: the smallest decode share meeting its rate and SLO (or the best)."""
        if spec.costs not in self.costs.models():
            raise ConfigError(f"model {spec.name!r}: the cost model has no costs for {spec.costs!r}; "
                              f"it has {', '.join(self.costs.models()) or 'none'}")
        out = {}
        for tp in self.estimator.tp_degrees(spec, self.mesh_sizes):
            best: Candidate | None = None
            for share in self.estimator.shares(spec, tp):
                est = self.estimator.evaluate(tp, ((spec, share),))
                if est is None:
                    continue
                m = est.models[0]
                c = Candidate(tp, share, m.meets_rate and m.meets_slo, m.served_rps)
                if c.meets:
                    best = c
                    break
                if best is None or (m.goodput, m.served_rps) > (self._alone_key(best, spec)):
                    best = c
            if best is not None:
                out[tp] = best
        return out

    def _alone_key(self, c: Candidate, spec: ModelSpec) -> tuple[float, float]:
        est = self.estimator.evaluate(c.tp, ((spec, c.share),))
        assert est is not None  # it was evaluated before
        return est.models[0].goodput, est.models[0].served_rps

    def demand(self, spec: ModelSpec, cands: dict[int, Candidate]) -> float:
        """Rate × device-seconds per request, unbatched, at its smallest mesh: the order of placement."""
        if not cands:
            return 0.0
        tp = min(cands)
        one = self.estimator.prefill(spec, tp).mean + self.estimator.lengths.mean_output * \
            self.estimator.step_s(spec, tp, 1.0, 1)
        return spec.rate * tp * one

    # -- groupings ------------------------------------------------------------
    def groupings(self) -> Iterator[tuple[tuple[int, ...], ...]]:
        """Every multiset of per-node splits, coarsest first."""
        splits = node_partitions(self.cluster.per_node, self.mesh_sizes)
        yield from itertools.combinations_with_replacement(splits, self.cluster.nodes)

    def _meshes(self, grouping: tuple[tuple[int, ...], ...]) -> list[_Mesh]:
        meshes = []
        for node, split in enumerate(grouping):
            first = 0
            for size in split:
                meshes.append(_Mesh(node, tuple(range(first, first + size)), cpu=self._cpu))
                first += size
        return meshes

    # -- the greedy -----------------------------------------------------------
    def _greedy(self, grouping: tuple[tuple[int, ...], ...], order: list[ModelSpec],
                cands: dict[str, dict[int, Candidate]]) -> _Result:
        result = _Result(self._meshes(grouping), [], [])
        for spec in order:
            if not self._place(result, spec, cands, squeeze=False):
                result.unplaced.append(spec)
        result = self._repair(result, cands)
        left, result.unplaced = result.unplaced, []
        for spec in left:  # what neither the greedy nor the repair placed: at its share if one is left, else squeezed
            if not (self._place(result, spec, cands, squeeze=False) or self._place(result, spec, cands, squeeze=True)):
                result.unplaced.append(spec)
        return result

    def _place(self, result: _Result, spec: ModelSpec, cands: dict[str, dict[int, Candidate]], squeeze: bool) -> bool:
        """Put ``spec`` on the mesh of ``result`` where goodput gains most (``_options``); False if none can take it."""
        meshes = result.meshes
        options = self._options(spec, meshes, cands, squeeze)
        if not options:
            return False
        options.sort(key=lambda o: o[:5])
        *_, i, members, est = options[0]
        mesh = meshes[i]
        runner = (meshes[options[1][4]].label, -options[1][0]) if len(options) > 1 else None
        share = members[-1][1]
        lowered = [(m.name, s) for (m, s), (_, was) in zip(members, mesh.members) if s < was - EPS]
        result.decisions.append(_Decision(spec, i, tuple(m.name for m, _ in mesh.members), -options[0][0],
                                          len(options), runner, lowered=tuple(lowered),
                                          squeezed=share if share < cands[spec.name][mesh.size].share - EPS
                                          else None))
        mesh.members = members
        mesh.estimate = est
        return True

    def _options(self, spec: ModelSpec, meshes: list[_Mesh], cands: dict[str, dict[int, Candidate]],
                 squeeze: bool) -> list[tuple]:
        """Meshes that can take ``spec``, as (sort key..., mesh, members with it, estimate).

        Without ``squeeze``, at its candidate share beside the members as
        they are. With it (no mesh had that share left), at the largest
        share a mesh has left, or at its smallest share with room made by
        lowering one member's share (``_squeezed``): the models are served
        less than their rates rather than one of them not at all.
        """
        options = []
        for i, mesh in enumerate(meshes):
            c = cands[spec.name].get(mesh.size)
            if c is None:
                continue
            if not squeeze:
                tries = [mesh.members + ((spec, c.share),)] if mesh.share_used + c.share <= 1 + EPS else []
            else:
                tries = self._squeezed(spec, mesh)
            for members in tries:
                est = self.estimator.evaluate(mesh.size, members)
                if est is None:
                    continue
                before = mesh.estimate
                gain = est.goodput - (before.goodput if before else 0.0)
                served = est.served - (before.served if before else 0.0)
                options.append((-round(gain, 9), -round(served, 9), mesh.share_used, mesh.size, i, members, est))
        return options

    def _squeezed(self, spec: ModelSpec, mesh: _Mesh) -> list[tuple[tuple[ModelSpec, float], ...]]:
        """The mesh's members with ``spec`` beside them: at the largest share left, if any is; else at its
        smallest, one member lowered to make room (one option per member that can give it)."""
        shares = self.estimator.shares(spec, mesh.size)
        left = [s for s in shares if mesh.share_used + s <= 1 + EPS]
        if left:
            return [mesh.members + ((spec, left[-1]),)]
        least = shares[0]
        deficit = mesh.share_used + least - 1
        out = []
        for k, (member, share) in enumerate(mesh.members):
            lower = [s for s in self.estimator.shares(member, mesh.size) if s <= share - deficit + EPS]
            if lower:
                members = mesh.members[:k] + ((member, lower[-1]),) + mesh.members[k + 1:]
                out.append(members + ((spec, least),))
        return out

    def _repair(self, result: _Result, cands: dict[str, dict[int, Candidate]]) -> _Result:
        """Swap an unplaced model for a placed one where the mesh gains (goodput, then throughput); repeat until none does.

        The greedy places a model that gains nothing (overloaded even alone)
        as readily as any; this pass gives its room to a model left out that
        gains more. Each swap strictly raises the total (goodput, throughput), so it ends.
        """
        swapped = True
        while swapped and result.unplaced:
            swapped = False
            for spec, i, k, est in self._swaps(result, cands):
                mesh = result.meshes[i]
                out = mesh.members[k][0]
                gain = est.goodput - mesh.estimate.goodput if mesh.estimate else est.goodput
                mesh.members = mesh.members[:k] + mesh.members[k + 1:] + ((spec, cands[spec.name][mesh.size].share),)
                mesh.estimate = est
                result.unplaced = [s for s in result.unplaced if s is not spec] + [out]
                result.decisions = [d for d in result.decisions if d.spec is not out]
                result.decisions.append(_Decision(spec, i, tuple(m.name for m, _ in mesh.members[:-1]), gain, 1, None,
                                                  out.name))
                swapped = True
                break
        return result

    def _swaps(self, result: _Result, cands: dict[str, dict[int, Candidate]]) -> Iterator[tuple]:
        for spec in result.unplaced:
            for i, mesh in enumerate(result.meshes):
                c = cands[spec.name].get(mesh.size)
                if c is None or mesh.estimate is None:
                    continue
                for k in range(len(mesh.members)):
                    members = mesh.members[:k] + mesh.members[k + 1:] + ((spec, c.share),)
                    if sum(share for _, share in members) > 1 + EPS:
                        continue
                    est = self.estimator.evaluate(mesh.size, members)
                    if est is not None and _better(est, mesh.estimate):
                        yield spec, i, k, est

    def plan(self, models: Sequence[ModelSpec]) -> Plan:
        """The best plan over all groupings (see the module's docstring)."""
        names = [m.name for m in models]
        if len(set(names)) != len(names):
            raise ConfigError(f"model names repeat: {', '.join(sorted(names))}")
        cands = {m.name: self.candidates(m) for m in models}
        order = sorted(models, key=lambda m: (-self.demand(m, cands[m.name]), m.name))
        need = max((min(c) for c in cands.values() if c), default=1)
        groupings = [g for g in self.groupings() if max(max(split) for split in g) >= need] or list(self.groupings())
        best: _Result | None = None
        for grouping in groupings:
            result = self._greedy(grouping, order, cands)
            if best is None or result.score(self.objective) > best.score(self.objective):
                best = result
        assert best is not None  # there is always at least one grouping
        return self._to_plan(best, cands, len(groupings))

    # -- the result -----------------------------------------------------------
    def _to_plan(self, result: _Result, cands: dict[str, dict[int, Candidate]], tried: int) -> Plan:
        reasons = {d.spec.name: self._reason(d, result.meshes, cands) for d in result.decisions}
        for spec in result.unplaced:
            reasons[spec.name] = (f"{spec.name}: not placed: no mesh of {', '.join(map(str, self.mesh_sizes))} "
                                  f"{self.cluster.device.kind} had the memory and compute left for it")
        units = []
        for mesh in result.meshes:
            est = mesh.estimate
            if est is None:
                continue
            placed = tuple(ModelPlacement(
                name=e.spec.name, cost_name=e.spec.costs, tp=mesh.size, rate=e.spec.rate,
                prefill_share=self.estimator.prefill_share, decode_share=e.share, kv_quota_pages=e.quota_pages,
                kv_quota_bytes=e.quota_bytes, batch=e.batch, expected_rps=e.served_rps,
                expected_tokens_s=e.served_rps * self.estimator.lengths.mean_output,
                slo_attainment=e.attainment, mean_latency_s=e.mean_latency_s, meets_rate=e.meets_rate,
                meets_slo=e.meets_slo, reason=reasons[e.spec.name]) for e in est.models)
            units.append(Unit(
                name="cpu" if self._cpu else mesh.label, node=mesh.node, devices="cpu" if self._cpu else mesh.gpus,
                device_kind=self.cluster.device.kind, device_memory_bytes=self.cluster.device.memory_bytes,
                weight_bytes=est.weight_bytes, reserve_bytes=est.reserve_bytes, kv_bytes=est.kv_bytes,
                page_tokens=self.estimator.page_tokens, page_bytes=est.page_bytes, models=placed))
        all_models = [m for u in units for m in u.models]
        return Plan(
            cluster=self.cluster.describe(), groupings_tried=tried, units=tuple(units),
            unplaced=tuple(s.name for s in result.unplaced),
            expected_rps=sum(m.expected_rps for m in all_models),
            expected_tokens_s=sum(m.expected_tokens_s for m in all_models),
            goodput_rps=sum(m.rate * m.slo_attainment for m in all_models),
            decisions=tuple(reasons[d.spec.name] for d in result.decisions)
            + tuple(reasons[s.name] for s in result.unplaced))

    def _reason(self, d: _Decision, meshes: list[_Mesh], cands: dict[str, dict[int, Candidate]]) -> str:
        mesh = meshes[d.mesh]
        c = cands[d.spec.name][mesh.size]
        where = f"shares {mesh.label} with {', '.join(d.beside)}" if d.beside else f"alone on {mesh.label}"
        if d.replaced:
            return (f"{d.spec.name} {where}, in place of {d.replaced}: {d.gain:+.2f} req/s within SLO more than "
                    f"{d.replaced} gave there; decode share {c.share:.0%}")
        why_share = (f"the smallest that carries its {d.spec.rate:.2f} req/s within SLO alone on {c.tp} device(s)"
                     if c.meets else f"its best alone on {c.tp} device(s), {c.served_rps:.2f} of {d.spec.rate:.2f} req/s")
        if d.squeezed is not None:
            lowered = "".join(f", {n}'s lowered to {s:.0%}" for n, s in d.lowered)
            return (f"{d.spec.name} {where}: no device had the {c.share:.0%} decode share it wants left, so it "
                    f"gets {d.squeezed:.0%}{lowered} ({d.gain:+.2f} req/s within SLO) rather than no place; "
                    f"{why_share}")
        lowered = "".join(f", {n}'s lowered to {s:.0%} to make room" for n, s in d.lowered)
        if d.options == 1 and len(meshes) == 1:
            return (f"{d.spec.name} {where} (the only device): {d.gain:+.2f} req/s within SLO; "
                    f"decode share {c.share:.0%}{lowered}, {why_share}")
        vs = f", next best {d.runner_up[0]} {d.runner_up[1]:+.2f}" if d.runner_up else ", the only one"
        return (f"{d.spec.name} {where}: {d.gain:+.2f} req/s within SLO, the most of {d.options} meshes{vs}; "
                f"decode share {c.share:.0%}{lowered}, {why_share}")


def _better(new: UnitEstimate, old: UnitEstimate) -> bool:
    """More goodput, or as much and more throughput (by more than rounding)."""
    if abs(new.goodput - old.goodput) > 1e-9:
        return new.goodput > old.goodput
    return new.served > old.served + 1e-9


def plan(models: Sequence[ModelSpec], costs: CostModel, cluster: Cluster, lengths: Lengths | None = None,
         **options: float) -> Plan:
    """``Planner(costs, cluster, lengths, **options).plan(models)``."""
    return Planner(costs, cluster, lengths, **options).plan(models)
