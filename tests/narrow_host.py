"""Config overrides shared by the tests that build a whole SSB detector from a config file: the
host made narrow (stem 16, bottlenecks 8/16/32/64 wide, outputs 32..256, FPN 16 channels), so
a training or export run takes seconds on one CPU core. Same depth and strides as the config's."""

NARROW_HOST_OPTS = [
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "32", "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.FPN.OUT_CHANNELS", "16",
]
