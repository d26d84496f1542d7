"""Deterministic synthetic datasets in the real on-disk layouts, for tests, demos and benchmarks."""

# The images are not medical images: they are cartoons with the geometry of the real ones (a chest
# film with two lungs, a breast on a mammogram) and a class-dependent pattern strong enough for a
# small CNN to learn from 32-64 px thumbnails in a few epochs. They let ingest, training,
# evaluation and serving run end to end without the real downloads.

from medkfp.synth.broken import write_broken_files
from medkfp.synth.covid import synth_covid
from medkfp.synth.dicom import synth_dicom
from medkfp.synth.mias import synth_mias

__all__ = ["synth_covid", "synth_dicom", "synth_mias", "write_broken_files"]
