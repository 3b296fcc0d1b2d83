"""Training engine shared by every project: the Trainer and the train_net skeleton.

``d2kit.engine.train_net`` (imported as ``from d2kit.engine import train_net``) is also the
baselines' launcher: ``python -m d2kit.engine.train_net --config-file ...``.
"""

from .trainer import Trainer, ddp_device_ids
