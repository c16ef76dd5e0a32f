from .runtime import AccelRuntime, Selection, StepRecord
from .tracker import STEP_TRACKER_HOOK, ContextStateManager, StepTrackerHook, scheduler_step_resolver

__all__ = ["AccelRuntime", "Selection", "StepRecord", "STEP_TRACKER_HOOK", "ContextStateManager", "StepTrackerHook",
           "scheduler_step_resolver"]
