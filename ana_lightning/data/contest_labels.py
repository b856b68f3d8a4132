"""Contest class names → ICAP tree labels (the ``public_datasets`` tables of the tree YAML).

Some names map to a leaf (``homogeneous`` → ``AC-1``), others to a coarser node (``nucleolar`` →
the level-2 node ``nucleolar``, ``cytoplasmatic`` → the level-1 node ``cytoplasmic``). The tables
themselves live in the tree (:attr:`~ana_lightning.taxonomy.Taxonomy.public_datasets`); this module
only spells the contest names the same way (``_norm``) and reads the tables in the contest's order.
"""

from __future__ import annotations

import re

from ..taxonomy import LabelError, Taxonomy

__all__ = ["CONTESTS", "contest_label_map", "map_contest_label", "contest_classes", "contest_class_of"]

#: Reader name (``data.reader``) → key of ``public_datasets`` in the tree YAML.
CONTESTS = {"icpr2012": "ICPR2012_MIVIA", "i3a2014": "I3A_ICPR2014_task1"}


def _norm(name: str) -> str:
    """``'Fine Speckled'``, ``'fine-speckled'`` and ``'fine_speckled'`` all become ``'fine_speckled'``
    (``/`` too: ``'Polar/Golgi-like'`` is ``'polar_golgi_like'``)."""
    return re.sub(r"[\s_\-/]+", "_", str(name).strip()).lower()


def contest_label_map(tree: Taxonomy, contest: str) -> dict[str, str]:
    """Normalised contest class name → tree label (an AC code or a level-1/level-2 node)."""
    key = CONTESTS.get(contest, contest)
    table = tree.public_datasets.get(key)
    if not table:
        raise ValueError(
            f"the class tree {tree.source} has no public_datasets.{key} mapping (known: {sorted(tree.public_datasets)})"
        )
    out = {}
    for name, target in table.items():
        out[_norm(name)] = tree.parse_label(target)  # LabelError when neither a code nor a node of the tree
    return out


def map_contest_label(tree: Taxonomy, contest: str, name: str) -> str:
    """The tree label of one contest class name (case, spaces, ``_`` and ``-`` do not matter).

    >>> map_contest_label(Taxonomy.load(), "icpr2012", "Fine speckled"), map_contest_label(Taxonomy.load(), "icpr2012", "nucleolar")
    ('AC-4', 'nucleolar')
    """
    table = contest_label_map(tree, contest)
    try:
        return table[_norm(name)]
    except KeyError:
        pass
    # not a contest name: an AC code or a level-2 group (ana-synth --cells --classes codes|level2)
    if tree.is_code(name):
        return tree.parse_code(name)
    nodes = {_norm(n): n for n in tree.nodes(2)}
    if _norm(name) in nodes:
        return nodes[_norm(name)]
    raise LabelError(
        f"{name!r} is not a {CONTESTS.get(contest, contest)} class (known: {sorted(table)}), "
        "nor an AC code or a level-2 group of the class tree"
    ) from None


def contest_classes(tree: Taxonomy, contest: str) -> dict[str, str]:
    """The contest's class names as it spells them, in its own order → tree label.

    >>> list(contest_classes(Taxonomy.load(), "icpr2012"))[:3]
    ['homogeneous', 'fine_speckled', 'coarse_speckled']
    """
    key = CONTESTS.get(contest, contest)
    mapped = contest_label_map(tree, contest)
    return {str(name): mapped[_norm(name)] for name in tree.public_datasets[key]}


def contest_class_of(tree: Taxonomy, contest: str) -> dict[str, str]:
    """Tree label → the contest class name (the inverse of :func:`contest_classes`; one name per label)."""
    out: dict[str, str] = {}
    for name, label in contest_classes(tree, contest).items():
        if label in out:
            raise ValueError(
                f"{CONTESTS.get(contest, contest)}: {out[label]!r} and {name!r} both map to {label!r}, "
                "so the contest classes cannot be a flat target"
            )
        out[label] = name
    return out
