"""Moved to :mod:`vdit_accel.shipped` (the core uses it). This alias keeps old imports working for one release."""

from ..shipped import (  # noqa: F401
    BUNDLED_MODEL_ID,
    SCHEDULES_DIR,
    SHIPPED_FILES,
    ShippedSchedule,
    check_schedule_for_pipe,
    check_schedule_for_run,
    pipeline_identity,
    resample_budgets,
    shipped_schedule_for,
    shipped_schedule_path,
)
