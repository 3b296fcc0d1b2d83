"""Training engine shared by every project: the Trainer and the train_net skeleton."""

from . import train_net
from .trainer import Trainer, ddp_device_ids
