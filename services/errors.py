"""Domain errors, raised by services and turned into HTTP answers only in api.

    CrossfoldError
    ├── JobNotFound        no such job (404)
    ├── StudyNotFound      no such study, or another owner's (404)
    ├── JobAlreadyFinished the job has ended; it cannot be cancelled (409)
    ├── IdempotencyConflict an Idempotency-Key reused with another body (409)
    ├── InvalidJob         the spec breaks a rule that needs the data to check (422)
    ├── DatasetNotFound    no such dataset, or another owner's (404)
    ├── DatasetInUse       a queued or running job uses it (409)
    ├── DatasetNameTaken   the owner has a dataset of that name already (409)
    ├── BundledDataset     a bundled dataset cannot be changed or deleted (403)
    ├── InvalidDataset     the file cannot be a dataset: empty, ragged, not UTF-8... (422)
    ├── UnsupportedFormat  neither CSV nor Parquet (415)
    └── UploadTooLarge     over CROSSFOLD_MAX_UPLOAD_BYTES (413)
"""


class CrossfoldError(Exception):
    pass


class JobNotFound(CrossfoldError):
    pass


class StudyNotFound(CrossfoldError):
    pass


class JobAlreadyFinished(CrossfoldError):
    pass


class IdempotencyConflict(CrossfoldError):
    pass


class InvalidJob(CrossfoldError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class DatasetNotFound(CrossfoldError):
    pass


class DatasetInUse(CrossfoldError):
    pass


class DatasetNameTaken(CrossfoldError):
    pass


class BundledDataset(CrossfoldError):
    pass


class InvalidDataset(CrossfoldError):
    pass


class UnsupportedFormat(CrossfoldError):
    pass


class UploadTooLarge(CrossfoldError):
    pass
