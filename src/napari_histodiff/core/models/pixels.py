"""Pixels <-> model tensors: uint8 NHWC tiles and float NCHW in [-1, 1]."""


def to_model_input(batch, device):
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return batch.to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x):
    """float NCHW in [-1, 1] -> uint8 NHWC numpy."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
