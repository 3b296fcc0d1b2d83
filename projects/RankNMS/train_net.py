"""Rank-NMS training script: detectron2's train_net skeleton (d2kit.engine.train_net) with the
Rank-NMS config keys."""

import rank_nms
from d2kit.engine import train_net


def main(args):
    return train_net.main(args, config_fns=[rank_nms.add_rank_nms_config])


if __name__ == "__main__":
    train_net.invoke_main(main)  # pragma: no cover
