"""The ICAP classification tree: the one place that knows class codes, their order and their levels.

Class order is *natural* (AC-0, AC-1, AC-2, …, AC-10, …), never lexicographic: index ``i`` of a
31-class model trained on the full tree is ``AC-i``. Every other module asks the taxonomy for class
indices and never sorts or parses class names itself.

>>> tax = Taxonomy.load()
>>> tax.codes[:3], tax.codes[10]
(('AC-0', 'AC-1', 'AC-2'), 'AC-10')
>>> tax.parse_code("ac_3"), tax.level_of("AC-5", 2), tax.level_of("AC-5", 1)
('AC-3', 'speckled', 'nuclear')
>>> tax.parse_codes("AC-1 + AC-4")
('AC-1', 'AC-4')
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

__all__ = ["Taxonomy", "LabelError", "natural_key", "DEFAULT_TREE"]

DEFAULT_TREE = "icap_tree.yaml"

# One AC code inside a longer name: "AC-3", "ac-3", "AC3", "ac_3", "AC 3". The look-arounds keep
# "xac3" or "AC-31a" from matching part of a word.
_CODE_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])ac[-_ ]?(\d+)(?![A-Za-z0-9])", re.IGNORECASE)
_CODE_ALONE = re.compile(r"^\s*ac[-_ ]?(\d+)\s*$", re.IGNORECASE)
# Characters allowed between codes in a multi-label folder name.
_SEPARATORS = re.compile(r"[\s,+&;_]+")


class LabelError(ValueError):
    """A class name that is not a code of the tree (the message names the input)."""


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers numerically: AC-2 < AC-10.

    >>> sorted(["AC-10", "AC-2", "AC-1"], key=natural_key)
    ['AC-1', 'AC-2', 'AC-10']
    """
    return tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text))


@dataclass(frozen=True)
class Taxonomy:
    """An ICAP-style 3-level tree: level 1 (compartment), level 2 (group), level 3 (AC code).

    Build it with :meth:`load` (the packaged tree, or a user's YAML with the same schema).
    """

    codes: tuple[str, ...]
    names: dict[str, str]
    level1: dict[str, str]
    level2: dict[str, str]
    public_datasets: dict[str, dict[str, str]] = field(default_factory=dict)
    source: str = DEFAULT_TREE

    # ---------------------------------------------------------------- construction
    @classmethod
    def load(cls, path: str | Path | None = None, codes: Sequence[str] | None = None) -> Taxonomy:
        """Load the packaged ICAP tree (``path=None``) or a user-supplied tree YAML.

        ``codes`` restricts the tree to a subset (given in any spelling, kept in natural order).
        """
        base = _load_cached(str(path) if path is not None else None)
        return base.subset(codes) if codes else base

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> Taxonomy:
        if not isinstance(data, dict) or not isinstance(data.get("codes"), list) or not data["codes"]:
            raise ValueError(f"tree file {source}: expected a mapping with a non-empty list under 'codes'")
        names, l1, l2 = {}, {}, {}
        for i, entry in enumerate(data["codes"]):
            missing = {"code", "level1", "level2"} - set(entry or {})
            if missing:
                raise ValueError(f"tree file {source}: entry {i} ({entry!r}) lacks {sorted(missing)}")
            m = _CODE_ALONE.match(str(entry["code"]))
            if not m:
                raise ValueError(f"tree file {source}: entry {i}: {entry['code']!r} is not an AC code")
            code = f"AC-{int(m.group(1))}"
            if code in names:
                raise ValueError(f"tree file {source}: {code} is listed twice")
            names[code] = str(entry.get("name", code))
            l1[code] = str(entry["level1"])
            l2[code] = str(entry["level2"])
        codes = tuple(sorted(names, key=natural_key))
        public = {
            k: {str(a): str(b) for a, b in v.items()} for k, v in (data.get("public_datasets") or {}).items()
        }
        return cls(codes=codes, names=names, level1=l1, level2=l2, public_datasets=public, source=source)

    def subset(self, codes: Iterable[str]) -> Taxonomy:
        """The same tree restricted to ``codes`` (natural order, whatever order they were given in)."""
        keep = {self.parse_code(c) for c in codes}
        if not keep:
            raise LabelError("an empty subset of classes was requested")
        ordered = tuple(c for c in self.codes if c in keep)
        return Taxonomy(
            codes=ordered,
            names={c: self.names[c] for c in ordered},
            level1={c: self.level1[c] for c in ordered},
            level2={c: self.level2[c] for c in ordered},
            public_datasets=self.public_datasets,
            source=self.source,
        )

    # ---------------------------------------------------------------- parsing
    def parse_code(self, text: str) -> str:
        """Canonical code for one label: ``AC-3``, ``ac-3``, ``AC3``, ``ac_3`` → ``AC-3``.

        Anything else, or a code not in this tree, raises :class:`LabelError` naming the input.
        """
        m = _CODE_ALONE.match(str(text))
        if not m:
            raise LabelError(
                f"{text!r} is not an AC code (expected e.g. 'AC-3', 'ac-3', 'AC3' or 'ac_3'){self.name_hint(text)}"
            )
        code = f"AC-{int(m.group(1))}"
        if code not in self.level1:
            raise LabelError(f"{text!r} is {code}, which is not in the class tree ({self._span()})")
        return code

    def name_hint(self, text: str) -> str:
        """``": <what it names>"`` when ``text`` (or one of its words) is a pattern's name rather than its code
        (``Negative``, ``Centromere``, ``speckled``), for an error message; else ``""``. Names are never read as
        classes: a folder or CSV label names AC codes."""
        by_name = {n.lower(): c for c, n in self.names.items()}
        by_name.update({"neg": "AC-0", "negative": "AC-0"})
        level2: dict[str, list[str]] = {}
        for c in self.codes:
            level2.setdefault(self.level2[c].lower(), []).append(c)
        words = [str(text)] + [t for t in _SEPARATORS.split(str(text)) if t]
        for w in dict.fromkeys(x.strip().lower() for x in words):
            if w in by_name:
                c = by_name[w]
                return f": {w!r} is the name of {c} ({self.names[c]}); name the class by its code, {c}"
            if w in level2:
                codes = level2[w]
                if len(codes) == 1:
                    return f": {w!r} is the pattern {codes[0]} ({self.names[codes[0]]}); name the class by its code, {codes[0]}"
                return (
                    f": {w!r} is the group of {', '.join(codes)} (level 2 of the tree); name each class by its AC "
                    "code (data=hierarchy data.level=2 then trains on such groups)"
                )
        return ""

    def is_code(self, text: str) -> bool:
        try:
            self.parse_code(text)
        except LabelError:
            return False
        return True

    def split_codes(self, name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Lenient parse of a multi-label name: ``(codes, other_tokens)``.

        Codes may be separated by spaces, commas, ``+``, ``&``, ``_`` or ``;``. Every other token
        (a titer ``1:160``, a word, a bare number, a code outside the tree) is returned in
        ``other_tokens``, never read as a class.

        >>> Taxonomy.load().split_codes("AC-4 1:160")
        (('AC-4',), ('1:160',))
        """
        found, other = [], []
        for m in _CODE_IN_TEXT.finditer(name):
            code = f"AC-{int(m.group(1))}"
            (found if code in self.level1 else other).append(code if code in self.level1 else m.group(0))
        other += [t for t in _SEPARATORS.split(_CODE_IN_TEXT.sub(" ", name)) if t]
        return tuple(sorted(set(found), key=self.codes.index)), tuple(other)

    def parse_codes(self, name: str) -> tuple[str, ...]:
        """All AC codes of a multi-label name such as ``"AC-1 + AC-4"`` or ``"ac-29_ac-3"``, strictly:
        any token that is not a code of the tree raises :class:`LabelError` naming it.
        """
        codes, other = self.split_codes(name)
        if other:
            raise LabelError(
                f"{name!r}: {', '.join(map(repr, other))} is not an AC code of the tree{self.name_hint(name)}"
            )
        if not codes:
            raise LabelError(f"{name!r} names no AC code")
        return codes

    # ---------------------------------------------------------------- levels
    @property
    def num_classes(self) -> int:
        return len(self.codes)

    def index(self, code: str) -> int:
        """Class index of a code (any accepted spelling)."""
        return self.codes.index(self.parse_code(code))

    def level_of(self, code: str, level: int) -> str:
        """The node of ``code`` at ``level`` (1 = compartment, 2 = group, 3 = the code itself)."""
        code = self.parse_code(code)
        if level == 1:
            return self.level1[code]
        if level == 2:
            return self.level2[code]
        if level == 3:
            return code
        raise ValueError(f"level must be 1, 2 or 3, got {level!r}")

    def nodes(self, level: int) -> tuple[str, ...]:
        """Nodes of a level in tree order (order of their first code in natural order)."""
        if level == 3:
            return self.codes
        seen: dict[str, None] = {}
        for c in self.codes:
            seen.setdefault(self.level_of(c, level), None)
        return tuple(seen)

    def children(self, node: str) -> tuple[str, ...]:
        """Codes under a level-1 or level-2 node, natural order."""
        kids = tuple(c for c in self.codes if node in (self.level1[c], self.level2[c]))
        if not kids:
            raise LabelError(f"{node!r} is not a level-1 or level-2 node of the tree")
        return kids

    def parent(self, node: str) -> str:
        """Level-1 node of a level-2 node (or of a code)."""
        for c in self.codes:
            if node in (c, self.level2[c]):
                return self.level1[c]
        raise LabelError(f"{node!r} is not a code or level-2 node of the tree")

    # ---------------------------------------------------------------- tree labels (a code or a node)
    # A record of contest data may carry a level-1 / level-2 node instead of a code (``nucleolar``,
    # ``cytoplasmic``): these say what such a label means at each level.
    def parse_label(self, label: str) -> str:
        """A tree label as the tree spells it: a code in canonical form, or a level-1/level-2 node.

        >>> Taxonomy.load().parse_label("ac_5"), Taxonomy.load().parse_label("nucleolar")
        ('AC-5', 'nucleolar')
        """
        if self.is_code(label):
            return self.parse_code(label)
        self.children(label)  # LabelError naming the label when it is not a node either
        return label

    def leaves(self, label: str) -> tuple[str, ...]:
        """The AC codes under a tree label (the code itself for a code), natural order."""
        return (self.parse_code(label),) if self.is_code(label) else self.children(label)

    def resolve(self, label: str, level: int) -> str | None:
        """The node of a tree label at ``level``, or None when the label does not determine it.

        >>> tree = Taxonomy.load()
        >>> tree.resolve("AC-5", 2), tree.resolve("nucleolar", 1), tree.resolve("nucleolar", 3)
        ('speckled', 'nuclear', None)
        """
        nodes = {self.level_of(c, level) for c in self.leaves(label)}
        return nodes.pop() if len(nodes) == 1 else None

    def label_path(self, label: str) -> tuple[str | None, str | None, str | None]:
        """``(level-1 node, level-2 node, leaf)`` of a tree label, None where it stops higher up."""
        return (self.resolve(label, 1), self.resolve(label, 2), self.resolve(label, 3))

    def leaves_by_group(self, codes: Iterable[str] | None = None, level: int = 2) -> dict[str, list[str]]:
        """Codes grouped by their node at ``level`` (1 or 2): ``{node: [codes]}``, nodes in order of
        first appearance and codes in the order given (default: every code of the tree, natural order).

        >>> Taxonomy.load().leaves_by_group()["nucleolar"], Taxonomy.load().leaves_by_group(["AC-5", "AC-1", "AC-2"])
        (['AC-8', 'AC-9', 'AC-10'], {'speckled': ['AC-5', 'AC-2'], 'homogeneous': ['AC-1']})
        """
        if level not in (1, 2):
            raise ValueError(f"leaves_by_group: level must be 1 or 2, got {level!r}")
        out: dict[str, list[str]] = {}
        for c in self.codes if codes is None else codes:
            out.setdefault(self.level_of(c, level), []).append(c)
        return out

    def display_name(self, code: str) -> str:
        code = self.parse_code(code)
        return f"{code} {self.names[code]}"

    def describe(self, label: str) -> str:
        """A tree label in words: a code with its pattern, a node with the codes under it.

        >>> Taxonomy.load().describe("AC-1"), Taxonomy.load().describe("nucleolar")
        ('AC-1 Nuclear homogeneous', 'ICAP node *nucleolar* (AC-8, AC-9, AC-10)')
        """
        if self.is_code(label):
            return self.display_name(label)
        try:
            leaves = self.leaves(label)
        except (KeyError, ValueError):
            leaves = ()
        return f"ICAP node *{label}*" + (f" ({', '.join(leaves)})" if leaves else "")

    def _span(self) -> str:
        return f"{self.codes[0]}…{self.codes[-1]}" if len(self.codes) > 3 else ", ".join(self.codes)


@lru_cache(maxsize=8)
def _load_cached(path: str | None) -> Taxonomy:
    if path is None:
        text = resources.files("ana_lightning.resources").joinpath(DEFAULT_TREE).read_text()
        source = DEFAULT_TREE
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"class tree file {p} does not exist")
        text, source = p.read_text(), str(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"tree file {source} is not valid YAML: {e}") from e
    return Taxonomy.from_dict(data, source=source)
