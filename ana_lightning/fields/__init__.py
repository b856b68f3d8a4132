"""From a field image to cells and verdicts: scale estimate, segmentation, crops, combined verdicts."""
