"""ana-lightning: ANA pattern classification on HEp-2 immunofluorescence images.

PyTorch Lightning + Hydra; see the README for the commands.
"""

__version__ = "0.1.0"
