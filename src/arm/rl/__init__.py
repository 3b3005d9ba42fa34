"""The RL stage (ARM §3): verifiable rewards, the GRPO loss, rollouts and ``GRPOModule``."""
