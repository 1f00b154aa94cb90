"""A trainer rank that hangs once, for test_train's deadline test (importable in the
rank's Ray worker process): rank 1 sleeps in its second end_step (step 2) of the first
trainer group of a run; a file beside the run's initial model marks that it did, so the
restarted group runs normally."""
import pathlib
import time

from rlhf_exact.trainer.worker import TrainerWorker


class HangOnceWorker(TrainerWorker):
    end_steps = 0

    def end_step(self):
        self.end_steps += 1
        marker = pathlib.Path(self.spec.model_path).parent / "hung_once"
        if self.rank == 1 and self.end_steps == 2 and not marker.exists():
            marker.touch()
            time.sleep(3600)
        return super().end_step()
