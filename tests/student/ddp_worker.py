"""Run by test_multiprocess.py (under torchrun or plain python): one toy training run."""

import sys

from stepdistill.student.trainer import TrainConfig, run_training

from student_toy import toy_records, toy_task

if __name__ == "__main__":
    group_by_length = sys.argv[2] == "grouped"
    model = sys.argv[3] if len(sys.argv) > 3 else "tiny"
    records = toy_records(without_rationale=(2, 11))
    # a 5th argument: the --kd-teacher folder (issue 24), with token KD and hidden states through projections
    kd = dict(kd_teacher=sys.argv[4], token_kd_weight=0.5, kd_divergence="jsd", hidden_weight=0.5,
              hidden_layers="1:2,2:4") if len(sys.argv) > 4 else {}
    config = TrainConfig(model=model, method="step-by-step", max_steps=4, batch_size=8, per_device_batch_size=2,
                         learning_rate=3e-3, eval_steps=4, logging_steps=1, seed=5, log_batch_ids=True,
                         max_target_length=16, group_by_length=group_by_length, **kd)
    run_training(toy_task(), records, records, records[:6], config, sys.argv[1])
    import torch.distributed as dist

    if dist.is_initialized():  # leave the gloo group cleanly: a rank exiting mid-teardown aborts its peer
        dist.barrier()
        dist.destroy_process_group()
