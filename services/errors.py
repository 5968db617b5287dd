"""Domain errors, raised by services and turned into HTTP answers only in api.

    CrossfoldError
    ├── JobNotFound        no such job (404)
    ├── JobAlreadyFinished the job has ended; it cannot be cancelled (409)
    ├── IdempotencyConflict an Idempotency-Key reused with another body (409)
    └── InvalidJob         the spec breaks a rule that needs the data to check (422)
"""


class CrossfoldError(Exception):
    pass


class JobNotFound(CrossfoldError):
    pass


class JobAlreadyFinished(CrossfoldError):
    pass


class IdempotencyConflict(CrossfoldError):
    pass


class InvalidJob(CrossfoldError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message
