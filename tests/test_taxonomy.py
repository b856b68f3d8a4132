from pathlib import Path

import pytest
import yaml

from ana_lightning.taxonomy import LabelError, Taxonomy, natural_key

SHARED_TREE = Path(__file__).resolve().parents[2] / "shared" / "domain" / "icap_tree.yaml"


def test_natural_order_not_lexicographic():
    tax = Taxonomy.load()
    assert tax.codes[:12] == tuple(f"AC-{i}" for i in range(12))
    assert tax.codes == tuple(f"AC-{i}" for i in range(32))
    assert [tax.index(f"AC-{i}") for i in range(32)] == list(range(32))
    assert sorted(["AC-10", "AC-2", "AC-1", "AC-0"], key=natural_key) == ["AC-0", "AC-1", "AC-2", "AC-10"]


@pytest.mark.parametrize("text", ["AC-3", "ac-3", "AC3", "ac_3", " Ac-03 "])
def test_lenient_spellings(text):
    assert Taxonomy.load().parse_code(text) == "AC-3"


@pytest.mark.parametrize("text", ["3", "AC-", "AC-3a", "patient12", "homogeneous", "AC-40", "AC-3 AC-4", ""])
def test_bad_labels_name_the_input(text):
    with pytest.raises(LabelError) as e:
        Taxonomy.load().parse_code(text)
    assert repr(text) in str(e.value)


def test_multilabel_names():
    tax = Taxonomy.load()
    assert tax.parse_codes("AC-1 AC-4") == ("AC-1", "AC-4")
    assert tax.parse_codes("AC-1+AC-4") == ("AC-1", "AC-4")
    assert tax.parse_codes("ac-29_ac-3") == ("AC-3", "AC-29")
    assert tax.parse_codes("AC-1, AC-5") == ("AC-1", "AC-5")
    assert tax.parse_codes("AC-1 & AC-5;AC-10") == ("AC-1", "AC-5", "AC-10")
    with pytest.raises(LabelError, match="1:160"):
        tax.parse_codes("AC-4 1:160")
    assert tax.split_codes("AC-4 1:160") == (("AC-4",), ("1:160",))
    with pytest.raises(LabelError, match="patient12"):
        tax.parse_codes("patient12")
    assert tax.split_codes("patient12") == ((), ("patient12",))


def test_levels_match_reference_tree():
    tax = Taxonomy.load()
    if SHARED_TREE.exists():
        ref = yaml.safe_load(SHARED_TREE.read_text())
    else:  # the packaged copy is the reference when ../shared is absent
        from importlib import resources

        ref = yaml.safe_load(
            resources.files("ana_lightning.resources").joinpath("icap_tree.yaml").read_text()
        )
    for entry in ref["codes"]:
        assert tax.level_of(entry["code"], 1) == entry["level1"]
        assert tax.level_of(entry["code"], 2) == entry["level2"]
        assert tax.level_of(entry["code"], 3) == entry["code"]
        assert tax.names[entry["code"]] == entry["name"]
    assert tax.nodes(1) == ("negative", "nuclear", "cytoplasmic", "mitotic")
    assert tax.children("nucleolar") == ("AC-8", "AC-9", "AC-10")
    assert tax.children("speckled") == ("AC-2", "AC-4", "AC-5", "AC-29")
    assert tax.parent("speckled") == "nuclear"


def test_subset_keeps_natural_order():
    sub = Taxonomy.load(codes=["ac-10", "AC2", "AC-1"])
    assert sub.codes == ("AC-1", "AC-2", "AC-10")
    with pytest.raises(LabelError):
        sub.parse_code("AC-3")


def test_user_tree_file(tmp_path):
    f = tmp_path / "tree.yaml"
    f.write_text(
        "codes:\n"
        "  - {code: AC-10, name: ten, level1: a, level2: x}\n"
        "  - {code: ac-2, name: two, level1: a, level2: y}\n"
        "  - {code: AC-1, name: one, level1: b, level2: z}\n"
    )
    tax = Taxonomy.load(f)
    assert tax.codes == ("AC-1", "AC-2", "AC-10")
    assert tax.level_of("AC-2", 2) == "y"
    bad = tmp_path / "bad.yaml"
    bad.write_text("codes:\n  - {code: homogeneous, level1: a, level2: b}\n")
    with pytest.raises(ValueError, match="homogeneous"):
        Taxonomy.load(bad)


def test_a_patterns_name_instead_of_its_code_is_refused_saying_which_code():
    """A hospital folder named 'Negative' or 'Centromere', or a level-2 group such as 'speckled', is never read
    as a class (names are not codes), but the error says which code it names."""
    from ana_lightning.taxonomy import LabelError, Taxonomy

    t = Taxonomy.load()
    cases = {
        "Negative": "'negative' is the name of AC-0 (Negative); name the class by its code, AC-0",
        "Centromere": "'centromere' is the name of AC-3 (Centromere)",
        "Homogeneous": "'homogeneous' is the pattern AC-1 (Nuclear homogeneous)",
        "speckled": "'speckled' is the group of AC-2, AC-4, AC-5, AC-29 (level 2 of the tree)",
        "AC-1 + negative": "'negative' is the name of AC-0",  # a multi-label folder with one name in it
    }
    for text, hint in cases.items():
        for parse in (t.parse_code, t.parse_codes):
            with pytest.raises(LabelError) as e:
                parse(text)
            assert hint in str(e.value), (parse.__name__, str(e.value))
    with pytest.raises(LabelError) as e:  # an unrelated word gets no hint
        t.parse_codes("cells")
    assert str(e.value) == "'cells': 'cells' is not an AC code of the tree"
