"""Noisy Anchors training script: detectron2's train_net skeleton (d2kit.engine.train_net) with
the Noisy Anchors config keys. Usage (flags are detectron2's)::

    python projects/NoisyAnchors/train_net.py --num-gpus 4 --config-file
        configs/NoisyAnchors/noisy_anchors_retinanet_R_50_FPN_1x_coco.yaml
"""

import noisy_anchors
from d2kit.engine import train_net


def main(args):
    return train_net.main(args, config_fns=[noisy_anchors.add_noisy_anchors_config])


if __name__ == "__main__":
    train_net.invoke_main(main)  # pragma: no cover
