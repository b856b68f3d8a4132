"""``ana-synth``: render the synthetic HEp-2 dataset (single-label or hospital layout)."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    from ..data.synthetic import main as synth_main

    synth_main(argv)


if __name__ == "__main__":
    main()
