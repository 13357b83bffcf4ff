"""How closely the deployed path matches the model: `yolostream eval` (mAP on COCO-style data, images or
clips through the daemon's own pipeline) and `yolostream parity` (backends and preprocessors compared stage by
stage)."""
