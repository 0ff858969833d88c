"""Test helper, put on PYTHONPATH of a dashboard server by tests/browser: every evaluation of a size not
yet known waits $FLEXMERGE_TEST_EVAL_DELAY seconds first, so the browser test can watch the pages while
evaluations are still running. Only this helper reads the variable; the engine knows nothing of it."""
import os
import time

DELAY_ENV = "FLEXMERGE_TEST_EVAL_DELAY"

if os.environ.get(DELAY_ENV):
    from flexmerge_core.studio import Explorer

    _curve = Explorer.curve

    def _slow_curve(self, budgets, progress=None):
        if not all(self.known(b) for b in budgets):
            time.sleep(float(os.environ[DELAY_ENV]))
        return _curve(self, budgets, progress)

    Explorer.curve = _slow_curve
