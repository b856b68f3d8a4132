"""The simulator's pattern registry: one named renderer per AC code of the tree, codes from the taxonomy."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from ana_lightning.data.synthetic import CODES, LEVEL2
from ana_lightning.data.synthetic.patterns import PATTERNS, canonical_code, renders
from ana_lightning.taxonomy import LabelError, Taxonomy


def test_every_code_of_the_tree_has_one_named_renderer():
    tax = Taxonomy.load()
    assert CODES == tax.codes
    assert set(PATTERNS) == set(tax.codes)
    names = [p.render.__name__ for p in PATTERNS.values()]
    assert len(set(names)) == len(names)
    for code, p in PATTERNS.items():
        assert p.code == code
        assert not re.fullmatch(r"_?r\d+", p.render.__name__), p.render.__name__
        assert (p.render.__doc__ or "").startswith(code + " "), (
            f"{p.render.__name__}'s docstring should name {code}"
        )
    assert LEVEL2 == dict(tax.level2)


def test_registry_refuses_unknown_and_duplicate_codes():
    with pytest.raises(LabelError, match="AC-99"):
        renders("AC-99")
    with pytest.raises(ValueError, match="already has a renderer"):
        renders("ac_4")(lambda f: f.canvas())
    assert PATTERNS["AC-4"].render.__name__ == "fine_speckled"


def test_canonical_code():
    assert canonical_code(" ac_03 ") == "AC-3"
    with pytest.raises(ValueError, match="unknown ICAP code 'AC-32'"):
        canonical_code("AC-32")


def test_simulator_imports_without_torch_and_without_a_cycle():
    code = (
        "import sys; import ana_lightning.data.synthetic.hard; import ana_lightning.data.synthetic; "
        "bad = [m for m in ('torch', 'lightning', 'hydra') if m in sys.modules]; assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
