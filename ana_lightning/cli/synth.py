"""``ana-synth``: render the synthetic HEp-2 dataset (single-label or hospital layout, or with
``--cells`` single-cell crops in the contest layout)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    import sys

    args = sys.argv[1:] if argv is None else list(argv)
    if "--cells" in args:  # single-cell crops in the contest layout
        from ..data.synthetic_cells import main as cells_main

        cells_main(args)
        return
    from ..data.synthetic import main as synth_main

    synth_main(args)


if __name__ == "__main__":
    main()
