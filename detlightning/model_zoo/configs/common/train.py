# Training loop settings read by scripts/lazyconfig_train_net.py (and `scripts/train.py lazy_config=...`).
train = dict(
    output_dir="./output",
    init_checkpoint="detectron2://ImageNetPretrained/MSRA/R-50.pkl",
    max_iter=90000,
    amp=dict(enabled=False),  # automatic mixed precision
    ddp=dict(  # DistributedDataParallel options
        broadcast_buffers=False,
        find_unused_parameters=False,
        fp16_compression=False,
    ),
    checkpoint_period=5000,
    eval_period=5000,
    log_period=20,
    device="cuda",
    cudnn_benchmark=False,
)
