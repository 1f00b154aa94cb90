"""A fault for the parity-violation test, loaded into the driver with
run.imports=[tests.loop.corrupt_sync]: the first weight update sent to the samplers
(the sync after step 1) carries a final norm changed by +0.5, so the samplers run
step 2 on weights the trainer does not have; every later update is sent unchanged, so
step 3 is exact again. The samplers really compute with the wrong weights: the loop's
own parity check is what finds it."""
from rlhf_exact.sampler.group import SamplerGroup

_update = SamplerGroup.update_weights
_sent = []


def _corrupt_first(self, weights):
    if not _sent:
        name = next(k for k in sorted(weights) if k.endswith("norm.weight"))
        weights = dict(weights) | {name: weights[name] + 0.5}
    _sent.append(True)
    return _update(self, weights)


SamplerGroup.update_weights = _corrupt_first
