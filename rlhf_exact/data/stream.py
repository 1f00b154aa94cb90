"""An endless stream of prompt batches in a seeded shuffled order, with a position
that is saved in checkpoints, so a resumed run sees the same batches as an
uninterrupted one.

Order: epoch e visits every row once, in the permutation
`numpy.random.default_rng([seed, e]).permutation(num_rows)`. Batches are cut from the
concatenation of epochs: a batch that reaches the end of an epoch continues at the
start of the next one, so no row is dropped and every batch has `batch_size` rows
(also when batch_size > num_rows). The permutation comes from NumPy's PCG64 stream,
stable across runs on one install; a NumPy upgrade may change it (NumPy does not
promise bit-stable `permutation` across versions), so resume with the same install.
With shuffle=False every epoch is the file order.

    stream = PromptStream(rows, seed=0, batch_size=8)
    batch = next(stream)              # list of 8 rows
    state = stream.state_dict()       # {"epoch": 0, "index": 8, "seed": 0, "num_rows": ...}
    PromptStream(rows, 0, 8).load_state_dict(state)  # continues with the same next batch
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class PromptStream:
    def __init__(self, rows: Sequence[dict], seed: int, batch_size: int, shuffle: bool = True):
        if len(rows) == 0:
            raise ValueError("PromptStream: no rows")
        if batch_size < 1:
            raise ValueError(f"PromptStream: batch_size must be >= 1, got {batch_size}")
        self.rows = rows
        self.seed = int(seed)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.epoch = 0  # epoch of the next row
        self.index = 0  # position of the next row in that epoch's permutation, in [0, num_rows)
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))

    def __iter__(self) -> PromptStream:
        return self

    def __next__(self) -> list[dict]:
        batch = []
        while len(batch) < self.batch_size:
            take = self._order[self.index:self.index + self.batch_size - len(batch)]
            batch += [self.rows[i] for i in take]
            self.index += len(take)
            if self.index == len(self.rows):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
        return batch

    def state_dict(self) -> dict[str, int]:
        """JSON-able position: {"epoch", "index", "seed", "num_rows"} (num_rows guards
        against resuming on a different prompt set)."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "num_rows": len(self.rows)}

    def load_state_dict(self, state: dict) -> None:
        missing = {"epoch", "index", "seed", "num_rows"} - set(state)
        if missing:
            raise ValueError(f"PromptStream state lacks {sorted(missing)}: got {state!r}")
        if state["seed"] != self.seed:
            raise ValueError(f"PromptStream state has seed {state['seed']}, this stream has seed {self.seed}")
        if state["num_rows"] != len(self.rows):
            raise ValueError(f"PromptStream state is for {state['num_rows']} rows, this stream has {len(self.rows)}")
        if state["epoch"] < 0 or not 0 <= state["index"] < len(self.rows):
            raise ValueError(f"PromptStream state out of range: epoch {state['epoch']}, index {state['index']} "
                             f"(num_rows {len(self.rows)})")
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._order = self._permutation(self.epoch)
