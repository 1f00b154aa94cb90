"""The FSDP2 trainer group as Ray actors: `world_size` `TrainerWorker` ranks in one
placement group, called together (every FSDP2 collective needs every rank).

    group = TrainerGroup(spec, world_size=2, device="cpu")
    per_rank = group.call("logprobs", plans)        # plans[r] goes to rank r
    weights = group.call_same("full_weights")[0]    # rank 0's return value

Ray is imported here and in the loop only; worker.py stays plain.
"""
from __future__ import annotations

import socket

from .worker import TrainerWorker


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrainerGroup:
    def __init__(self, spec: dict, world_size: int, device: str = "cpu", cpus_per_rank: float = 0.5,
                 gpus_per_rank: float = 1.0):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.world_size = world_size
        bundle = {"CPU": cpus_per_rank} | ({"GPU": gpus_per_rank} if device == "cuda" else {})
        self.pg = placement_group([bundle] * world_size, strategy="PACK")
        ray.get(self.pg.ready())
        port = free_port()
        cls = ray.remote(TrainerWorker)
        self.actors = [
            cls.options(num_cpus=cpus_per_rank, num_gpus=gpus_per_rank if device == "cuda" else 0,
                        scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=r),
                        runtime_env={"env_vars": {"LOCAL_RANK": "0", "OMP_NUM_THREADS": "1"}})
            .remote(r, world_size, port, spec)
            for r in range(world_size)]
        self.call_same("ready")  # surfaces a rank's constructor error here

    def call(self, method: str, per_rank_args: list, **kwargs) -> list:
        """rank r runs method(per_rank_args[r], **kwargs); returns the ranks' results."""
        return self._wait([getattr(a, method).remote(arg, **kwargs) for a, arg in zip(self.actors, per_rank_args)])

    def call_same(self, method: str, *args, **kwargs) -> list:
        return self._wait([getattr(a, method).remote(*args, **kwargs) for a in self.actors])

    def _wait(self, refs: list) -> list:
        """All ranks' results. When one rank fails, the others are stuck in a collective
        that will never complete: the group is killed and the first error raised."""
        import ray

        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except Exception:
                for a in self.actors:
                    ray.kill(a)
                raise
        return ray.get(refs)

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        try:
            self.call_same("shutdown")
        finally:
            for a in self.actors:
                ray.kill(a)
            remove_placement_group(self.pg)
