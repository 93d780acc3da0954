"""Transitional: the row labels of the paper's plain networks, for ``reporting/audit.py`` only.

The architectures that were here were built by no stage, notebook or command and are gone; the
labels now live in :data:`dwf_lab.reporting.paper.PLAIN_NETWORK_ROWS`. Delete this module once
``reporting/audit.py`` imports them from there.
"""
ZOO: dict[str, str] = {
    "vgg19": "VGG-19", "resnet18": "ResNet-18", "resnet34": "ResNet-34", "resnet50": "ResNet-50",
    "densenet121": "DenseNet-121", "densenet169": "DenseNet-169", "googlenet": "GoogLeNet",
    "inception_v3": "Inception-V3", "xception": "Xception", "mobilenet_v2": "MobileNet-V2",
}
