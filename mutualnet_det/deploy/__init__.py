"""Deployment: a trained slimmable model frozen at one width into plain Detectron2 modules
(`freeze`), and ImageNet checkpoints (official MutualNet, torchvision) converted into this
project's layout (`converters`)."""
