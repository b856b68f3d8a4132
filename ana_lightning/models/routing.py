"""Routing over the ICAP tree: the candidate paths of a tree and the pick of one path per image.

An image is routed level 1 → level 2 → level 3. Every candidate *path* ``(level-1 node, level-2
node, leaf)`` of the tree gets the score ``P(l1) · P(l2 | l1) · P(leaf | l2)``, where ``P(l2 | l1)`` is
the level-2 probability renormalised over the children of ``l1`` (1 for an only child), and
``P(leaf | l2)`` comes from that group's level-3 model (1 for a group with a single leaf; a group
with several leaves and no level-3 model ends its paths at level 2, leaf unknown, with ``1/n``).

- ``routing="hard"``: take the best level-1 node, then the best of *its* level-2 children, then the
  best leaf of that group — errors at a level cannot be undone below it.
- ``routing="product"``: take the path with the highest product.

Either way the predicted leaf is a child of the predicted level-2 node, which is a child of the
predicted level-1 node: :func:`route` only ever picks whole paths of the tree. Plain tensors only:
used by the multi-head model, the three-model pipeline and the predictor alike.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..taxonomy import Taxonomy

__all__ = ["ROUTINGS", "TreePaths", "PathPrediction", "route", "path_scores"]

ROUTINGS = ("hard", "product")


@dataclass
class PathPrediction:
    """Predicted path per image: level-1 node, level-2 node, leaf (None when no level-3 model decides),
    and the path's probability product."""

    level1: list[str]
    level2: list[str]
    leaf: list[str | None]
    score: torch.Tensor
    level1_prob: torch.Tensor | None = None  # P(level-1 node)
    level2_prob: torch.Tensor | None = (
        None  # P(level-1 node) · P(level-2 node | level-1 node); score is the leaf's
    )

    def __len__(self) -> int:
        return len(self.level1)

    def rows(self) -> list[tuple[str, str, str | None]]:
        return list(zip(self.level1, self.level2, self.leaf, strict=True))


class TreePaths:
    """The candidate paths of a tree, given which leaves each group's level-3 model can name.

    ``level3_classes[g]`` lists the leaves the level-3 model of group ``g`` predicts; groups with a
    single leaf need none; other groups without an entry end at level 2.
    """

    def __init__(self, tree: Taxonomy, level3_classes: Mapping[str, Sequence[str]]):
        self.tree = tree
        self.paths: list[tuple[str, str, str | None]] = []
        for g in tree.nodes(2):
            leaves = tree.children(g)
            l1 = tree.level_of(leaves[0], 1)
            if len(leaves) == 1:
                self.paths.append((l1, g, leaves[0]))
            elif g in level3_classes:
                unknown = sorted(set(level3_classes[g]) - set(leaves))
                if unknown:
                    raise ValueError(
                        f"the level-3 model of {g!r} names {unknown}, which are not leaves of {g!r}"
                    )
                self.paths += [(l1, g, c) for c in level3_classes[g]]
            else:
                self.paths.append((l1, g, None))
        self.level1 = list(tree.nodes(1))
        self.level2 = list(tree.nodes(2))
        self.l2_siblings = {
            g: [h for h in self.level2 if tree.parent(h) == tree.parent(g)] for g in self.level2
        }


def _gather(p: torch.Tensor, names: Sequence[str], wanted: Sequence[str]) -> torch.Tensor:
    """Columns of ``p`` (N, len(names)) for ``wanted`` (0 for names the model does not know)."""
    idx = {n: i for i, n in enumerate(names)}
    out = p.new_zeros(p.shape[0], len(wanted))
    for j, w in enumerate(wanted):
        if w in idx:
            out[:, j] = p[:, idx[w]]
    return out


def route(
    paths: TreePaths,
    p1: torch.Tensor,
    names1: Sequence[str],
    p2: torch.Tensor,
    names2: Sequence[str],
    p3: Mapping[str, tuple[torch.Tensor, Sequence[str]]],
    routing: str = "hard",
) -> PathPrediction:
    """Pick one path of the tree per image from level-wise probabilities (see the module docstring).

    ``p1``/``p2`` are ``(N, len(names))`` probabilities of the level-1/level-2 classifiers; ``p3[g]`` is
    ``(probabilities (N, k_g), class names)`` of group ``g``'s level-3 model.
    """
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    n = p1.shape[0]
    P1, s1, s2, s3 = path_scores(paths, p1, names1, p2, names2, p3)
    l1_index = {v: i for i, v in enumerate(paths.level1)}
    l2_index = {v: i for i, v in enumerate(paths.level2)}
    score = s1 * s2 * s3
    if routing == "product":
        best = score.argmax(1)
    else:
        l1_of = torch.tensor([l1_index[p[0]] for p in paths.paths])
        l2_of = torch.tensor([l2_index[p[1]] for p in paths.paths])
        chosen1 = P1.argmax(1)  # (N,)
        mask = l1_of[None, :] == chosen1[:, None]
        g_score = torch.where(mask, s2, torch.full_like(s2, -1.0))
        chosen2 = l2_of[g_score.argmax(1)]
        mask = mask & (l2_of[None, :] == chosen2[:, None])
        best = torch.where(mask, s3, torch.full_like(s3, -1.0)).argmax(1)
    picked = [paths.paths[int(b)] for b in best]
    rows = torch.arange(n)
    return PathPrediction(
        level1=[p[0] for p in picked],
        level2=[p[1] for p in picked],
        leaf=[p[2] for p in picked],
        score=score[rows, best],
        level1_prob=s1[rows, best],
        level2_prob=(s1 * s2)[rows, best],
    )


def path_scores(
    paths: TreePaths,
    p1: torch.Tensor,
    names1: Sequence[str],
    p2: torch.Tensor,
    names2: Sequence[str],
    p3: Mapping[str, tuple[torch.Tensor, Sequence[str]]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(P1, s1, s2, s3)``: level-1 probabilities over ``paths.level1`` and, per candidate path (columns of
    ``paths.paths``), ``P(l1)``, ``P(l2 | l1)`` and ``P(leaf | l2)`` (see :func:`route`)."""
    n = p1.shape[0]
    P1 = _gather(p1.float(), names1, paths.level1)  # (N, |L1|)
    P2 = _gather(p2.float(), names2, paths.level2)  # (N, |L2|)
    l1_index = {v: i for i, v in enumerate(paths.level1)}
    l2_index = {v: i for i, v in enumerate(paths.level2)}
    cond2 = torch.zeros_like(P2)
    for g, sibs in paths.l2_siblings.items():
        j = l2_index[g]
        if len(sibs) == 1:
            cond2[:, j] = 1.0
        else:
            total = P2[:, [l2_index[h] for h in sibs]].sum(1)
            cond2[:, j] = torch.where(total > 0, P2[:, j] / total.clamp(min=1e-12), torch.zeros_like(total))
    cols1, cols2, cols3 = [], [], []
    p3_cond = {
        g: (pr.float() / pr.float().sum(1, keepdim=True).clamp(min=1e-12), list(nm))
        for g, (pr, nm) in p3.items()
    }
    for l1, g, leaf in paths.paths:
        cols1.append(P1[:, l1_index[l1]])
        cols2.append(cond2[:, l2_index[g]])
        n_leaves = len(paths.tree.children(g))
        if leaf is None:
            cols3.append(torch.full((n,), 1.0 / n_leaves))
        elif n_leaves == 1:
            cols3.append(torch.ones(n))
        else:
            pr, nm = p3_cond[g]
            cols3.append(pr[:, nm.index(leaf)])
    return P1, *(torch.stack(c, 1) for c in (cols1, cols2, cols3))  # (N, |L1|), 3 × (N, paths)
