"""Errors the edges translate once: the API to a 4xx, the CLI to one line, workers to a retry.

Every message says what was wrong and what fixes it.
"""

from __future__ import annotations


class NominalError(Exception):
    """Base of every error Nominal raises on purpose.

    `field` names the input at fault (`policy`, `fail`), so an edge can point at it: the API
    puts it in the error's `loc`, the CLI in its option name.
    """

    def __init__(self, *args: object, field: str | None = None) -> None:
        self.field = field
        super().__init__(*args)


class BadImage(NominalError):
    """An input that cannot be used as an image (not an image, truncated, too small, too big).

    `too_large` (over a size or pixel limit) and `unsupported` (not an accepted
    format) let an HTTP edge answer 413 and 415 instead of a generic 422.
    """

    def __init__(self, source: str, reason: str, *, too_large: bool = False, unsupported: bool = False) -> None:
        self.source = source
        self.reason = reason
        self.too_large = too_large
        self.unsupported = unsupported
        super().__init__(f"{source}: {reason}")


class NoImages(NominalError):
    """A folder, glob or manifest that yielded no image files."""


class UnknownSetting(NominalError):
    def __init__(self, setting: str) -> None:
        self.setting = setting
        super().__init__(
            f"unknown machine setting {setting!r}: create it by indexing PASS images into it",
            field="setting",
        )


class InvalidName(NominalError):
    """A machine-setting name the store cannot use as part of a collection name."""


class UnknownBackbone(NominalError):
    pass


class WeightsUnavailable(NominalError):
    """Pretrained weights could not be loaded; never replaced by random weights."""


class BackboneMismatch(NominalError):
    """Vectors of one backbone compared against a collection built with another."""


class BackboneChangeNeedsReindex(BackboneMismatch):
    """A settings update that names another backbone than the one the active version is built on."""


class EmptyCollection(NominalError):
    """Scoring against a setting that holds no nominal images yet."""


class InvalidCalibration(NominalError):
    """Calibration input that cannot give a threshold (bad policy, no PASS images...)."""


class InvalidTraining(NominalError):
    """A training that cannot run: too few labelled FAIL images (`field` "fail")."""


class TrainingNotApplicable(InvalidTraining):
    """A training asked of a setting it does not apply to (patch scoring)."""


class StoreUnavailable(NominalError):
    """The vector store cannot be reached or opened (transient for a server; a lock for embedded)."""


class NoPreviousVersion(NominalError):
    """A rollback asked of a setting that has no older ready version."""


class VersionCheckFailed(NominalError):
    """A re-indexed version that failed its checks before the switch; the old version stays active."""


class SourceNotAllowed(NominalError):
    """A re-index source, or an image it names, outside the directories sources may be read from."""


class NotConfigured(NominalError):
    """A command that needs a part of the deployment (a broker, a server) that is not configured."""


class JobFailed(NominalError):
    """A job a command waited for ended failed or cancelled; the message is the job's."""


class UnknownJob(NominalError):
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"no job {job_id!r} (finished jobs are kept 30 days)")


class UnknownCalibration(NominalError):
    def __init__(self, setting: str, calibration_id: str) -> None:
        self.calibration_id = calibration_id
        super().__init__(f"setting {setting!r} has no calibration {calibration_id!r}", field="calibration_id")


class UnknownInspection(NominalError):
    def __init__(self, setting: str, inspection_id: int) -> None:
        self.inspection_id = inspection_id
        super().__init__(f"setting {setting!r} has no recorded inspection {inspection_id} (see `nominal history`)",
                         field="inspection_id")


class AlreadyReviewed(NominalError):
    """A review label for an inspection an operator already labelled (or skipped): the first label stands."""

    def __init__(self, setting: str, inspection_id: int, review: str) -> None:
        self.review = review
        super().__init__(f"inspection {inspection_id} of {setting!r} was already reviewed ({review}); the first label "
                         "stands (POST .../feedback with the image to change what calibration learns)",
                         field="inspection_id")


class ImageNotKept(NominalError):
    """A review label for an inspection whose image is no longer kept (retention deleted it, or it never was)."""

    def __init__(self, setting: str, inspection_id: int) -> None:
        super().__init__(f"inspection {inspection_id} of {setting!r} no longer keeps its image (past "
                         "NOMINAL_KEEP_INSPECTIONS_DAYS or NOMINAL_MAX_INSPECTION_BYTES, or never kept): a label "
                         "without the image cannot reach calibration; skip it", field="inspection_id")
