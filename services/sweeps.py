"""What a dispatcher looks after now and then, besides its jobs: MLflow passwords that
are keys the API now refuses, and studies whose last variants ended without it."""
from __future__ import annotations

import logging
import time

from sqlalchemy.orm import Session

from services.mlflow_logins import retire_refused_logins
from services.study_runs import close_ended_studies
from services.tracking import Tracker

log = logging.getLogger(__name__)

LOGIN_SWEEP_S = 60.0  # how often MLflow passwords that are expired keys are replaced
STUDY_SWEEP_S = 10.0  # how often studies that ended without this dispatcher are looked for
STUDY_RETRY_S = 600.0  # how long a study whose run could not be closed is left alone


class Sweeps:
    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.logins_swept_at = self.studies_swept_at = float("-inf")
        self.studies_failed: dict[str, float] = {}  # study id → when it may be tried again

    def run(self, session: Session) -> None:
        self.retire_mlflow_logins(session)
        self.close_ended_studies(session)

    def close_ended_studies(self, session: Session) -> None:
        """Every STUDY_SWEEP_S: studies whose last variants ended elsewhere: cancelled
        while queued by the API, or finished by a dispatcher that died (study_runs)."""
        if time.monotonic() - self.studies_swept_at < STUDY_SWEEP_S:
            return
        self.studies_swept_at = now = time.monotonic()
        self.studies_failed = {id_: until for id_, until in self.studies_failed.items() if until > now}
        for study_id in close_ended_studies(session, self.tracker, skip=set(self.studies_failed)):
            self.studies_failed[study_id] = now + STUDY_RETRY_S

    def retire_mlflow_logins(self, session: Session) -> None:
        """Once a minute, where MLflow runs basic-auth: MLflow passwords that are keys the
        API now refuses (revoked, expired) are replaced (services.mlflow_logins)."""
        if self.tracker.access is None or time.monotonic() - self.logins_swept_at < LOGIN_SWEEP_S:
            return
        self.logins_swept_at = time.monotonic()
        try:
            if retired := retire_refused_logins(session, self.tracker.access):
                log.info("replaced %d MLflow passwords that were revoked or expired keys", retired)
        except Exception as error:  # MLflow down: the next sweep tries again
            session.rollback()
            log.warning("could not replace MLflow passwords of refused keys: %s", first_line(error))


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
