"""A trainer rank that dies (SIGKILL of its own process) outside the step, for
test_train's restart test (importable in the rank's Ray worker process): rank 1 dies
once in the first checkpoint's `state()` and once in the final export's
`full_weights()`, the second `full_weights` call after the last step (the first is that
step's weight sync). Files in the run directory mark each death, so the
restarted groups run normally."""
import os
import pathlib
import signal

from rlhf_exact.trainer.worker import TrainerWorker


class DieOnceWorker(TrainerWorker):
    last_step = 4  # the run's run.steps
    final_gathers = 0

    def _die_once(self, what: str) -> None:
        marker = pathlib.Path(self.spec.model_path).parent / f"died_in_{what}"
        if self.rank == 1 and not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)

    def state(self):
        self._die_once("checkpoint")
        return super().state()

    def full_weights(self, dtype="bfloat16"):
        if self.steps_done == self.last_step:
            self.final_gathers += 1
            if self.final_gathers == 2:
                self._die_once("export")
        return super().full_weights(dtype)
