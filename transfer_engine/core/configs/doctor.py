"""`te doctor`'s config: which cached data set to examine, how, and what remedy to write."""

from __future__ import annotations

from dataclasses import dataclass

from transfer_engine.core.choices import LEAKED_REMEDIES
from transfer_engine.core.configs import shared
from transfer_engine.core.configs.base import Config
from transfer_engine.core.options import option
from transfer_engine.core.selection import check_folds

# The cosine of two images' cached features above which te doctor calls them the same picture. Chosen on
# real images copied the ways pictures get copied (cropped, resized, colour-shifted, re-encoded) against
# distinct images of the same class, on the tuning sets only: docs/doctor.md, "The near-duplicate threshold".
NEAR_DUPLICATE_COSINE = 0.975
# With the copy signature cached (backbone dct_signature): the signature's cosine above which a pair is the
# same picture, and the floor the features' cosine must reach too. Chosen together on the same tuning sets,
# the held-out set left out: docs/doctor.md, "The copy signature".
SIGNATURE_COSINE = 0.985
SIGNATURE_FLOOR = 0.93
# With the copy thumbnails cached (backbone copy_thumbnail): the aligned score (the best crop box of one
# thumbnail against the other whole, normalised cross-correlation) above which a candidate is the same
# picture, and the floor its features' cosine must reach. Chosen together on the tuning sets, the held-out sets
# left out: docs/doctor.md, "Aligned thumbnails" (0.995 until the crops were resampled as the pictures are).
ALIGNED_SCORE = 0.997
ALIGNED_FLOOR = 0.85


@dataclass(frozen=True)
class DoctorConfig(Config):
    """What `te doctor` is asked to do; `te doctor --help` says what each field means."""

    cache: str = option(help="Feature cache directory (filled by te extract).", metavar="DIR", required=True)
    dataset: str | None = shared.cached_dataset()
    backbone: str | None = shared.feature_backbone()
    space: str | None = shared.feature_space()
    out: str = option("doctor", metavar="DIR", help="Where doctor.md, doctor.json and the contact sheets (PNG) go.")
    threshold: float = option(NEAR_DUPLICATE_COSINE, low=0, high=1, metavar="COS",
                              help="Cosine of the cached features above which two images count as the same "
                                   "picture (near duplicates) without the copy signature (docs/doctor.md says how "
                                   "the default was chosen).")
    signature: bool = option(True, flag="--signature/--no-signature",
                             help="Judge near duplicates by the copy thumbnails (te extract --backbone copy_thumbnail) "
                                  "or else the copy signature (dct_signature) when the cache holds them for these "
                                  "images; --no-signature: by the features alone.")
    signature_threshold: float = option(SIGNATURE_COSINE, low=0, high=1, metavar="COS",
                                        help="With the copy signature: its cosine above which two images count as the "
                                             "same picture (docs/doctor.md says how the default was chosen).")
    signature_floor: float = option(SIGNATURE_FLOOR, low=0, high=1, metavar="COS",
                                    help="With the copy signature: the cosine the features must reach too.")
    aligned: bool = option(True, flag="--aligned/--no-aligned",
                           help="With --signature: line up the copy thumbnails when the cache holds them; "
                                "--no-aligned: the copy signature (or the features) judges instead.")
    aligned_threshold: float = option(ALIGNED_SCORE, low=0, high=1, metavar="NCC",
                                      help="With the copy thumbnails: the score of the two pictures lined up (the best "
                                           "crop box of one against the other, normalised cross-correlation) above "
                                           "which they count as the same picture (docs/doctor.md says how the default "
                                           "was chosen).")
    aligned_floor: float = option(ALIGNED_FLOOR, low=0, high=1, metavar="COS",
                                  help="With the copy thumbnails: the cosine the features must reach too.")
    probe: str = option("linear", metavar="HEAD", help="The head (te heads) whose out-of-fold probabilities find "
                                                       "likely label errors.")
    folds: int = shared.folds()
    run: str | None = option(None, metavar="RUN", help="A te train run whose head is judged on test with and without "
                                                       "the leaked images (default: the probe, fitted on train+val).")
    write_manifest: str | None = option(None, metavar="FILE.csv",
                                        help="Write a CSV manifest (path,label,split) of the data set without the "
                                             "leaked val/test images, for te extract --data (your files are not "
                                             "touched).")
    leaked: str = option("drop", choices=LEAKED_REMEDIES,
                         help="What the manifest does with a val/test image that duplicates a train image: drop it, "
                              "or move it to train.")
    drop_label_errors: bool = option(False, help="Leave the likely label errors (train and val) out of the manifest "
                                                 "too.")
    top: int = option(24, low=1, metavar="N", help="Pairs and suspects shown in doctor.md and the contact sheets.")
    sheets: bool = option(True, flag="--sheets/--no-sheets", changes_run=False,
                          help="Draw the contact sheets (the only step that reads images).")
    seed: int = option(0, help="Seeds the probe.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "cache", str(self.cache))
        object.__setattr__(self, "out", str(self.out))
        if self.write_manifest is not None:
            object.__setattr__(self, "write_manifest", str(self.write_manifest))
        if self.run is not None:
            object.__setattr__(self, "run", str(self.run))
        check_folds(self.folds)
        self.check()
