"""HNMS training script: detectron2's train_net skeleton (d2kit.engine.train_net) with the HNMS
config keys.

    python projects/HNMS/train_net.py \
        --config-file configs/HNMS/quick_schedules/hnms_faster_rcnn_R_18_FPN_quick_synth_crowd.yaml
"""

import hnms
from d2kit.engine import train_net


def main(args):
    return train_net.main(args, config_fns=[hnms.add_hnms_config])


if __name__ == "__main__":
    train_net.invoke_main(main)  # pragma: no cover
