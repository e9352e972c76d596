"""MTCNN's three-stage cascade on a batch, in the memory layout the CPU convolutions want.

This is facenet-pytorch 2.5.3's ``detect_face`` (MIT licence, Tim Esler; after Zhang et al.
2016 and davidsandberg/facenet) with two changes of memory layout. The batch is converted
to a contiguous NCHW float tensor for the image pyramid (facenet keeps the channels-last
strides of its NHWC input, on which ``interpolate(mode="area")`` is a third slower). And on
the CPU the three networks get channels-last weights and inputs: PyTorch hands those
convolutions to oneDNN's blocked kernels, which run P-net (most of detection time: every
level of the image pyramid of every image) about twice as fast as the default layout. Detections equal
facenet's up to float rounding (``tests/annotate/test_detect.py`` compares the two).

Everything else (pyramid, NMS, box regression, R-net and O-net crops, landmarks,
thresholds) is facenet's own code, imported from the installed wheel.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def detect_batch(
    imgs: torch.Tensor,
    minsize: int,
    pnet: nn.Module,
    rnet: nn.Module,
    onet: nn.Module,
    threshold: list[float],
    factor: float,
    channels_last: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Detect faces in a batch of equal-size images (facenet's ``detect_face`` in oneDNN's layout).

    Args:
        imgs: ``uint8 [N, H, W, 3]`` on the networks' device.
        minsize: Smallest face side in pixels (sets the pyramid's first scale).
        pnet, rnet, onet: facenet's networks.
        threshold: Score thresholds of the three stages.
        factor: Pyramid scale step.
        channels_last: Feed the networks channels-last tensors (give them channels-last
            weights too): oneDNN's convolutions on the CPU run twice as fast that way.

    Returns:
        Per image: boxes ``[K, 5]`` (x0, y0, x1, y1, score) and landmarks ``[K, 5, 2]``.
    """
    layout = torch.channels_last if channels_last else torch.contiguous_format
    # A contiguous NCHW float copy: ``.type()`` of the permuted view (facenet's way) keeps its
    # channels-last strides, on which the pyramid's area resizing runs a third slower.
    batch = imgs.permute(0, 3, 1, 2).to(next(pnet.parameters()).dtype, memory_format=torch.contiguous_format)
    h, w = batch.shape[2:4]
    boxes, image_inds = _pnet_stage(batch, _pyramid_scales(h, w, minsize, factor), pnet, threshold[0], layout)
    if len(boxes) > 0:
        boxes, image_inds = _rnet_stage(batch, boxes, image_inds, rnet, threshold[1], layout)
    points = torch.zeros(0, 5, 2, device=imgs.device)
    if len(boxes) > 0:
        boxes, image_inds, points = _onet_stage(batch, boxes, image_inds, onet, threshold[2], layout)
    return _per_image(boxes, points, image_inds, len(batch))


def _pyramid_scales(h: int, w: int, minsize: int, factor: float) -> list[float]:
    """Scales of the image pyramid: from ``12 / minsize`` down while the short side stays >= 12 px."""
    m = 12.0 / minsize
    minl = min(h, w) * m
    scale_i = m
    scales = []
    while minl >= 12:
        scales.append(scale_i)
        scale_i = scale_i * factor
        minl = minl * factor
    return scales


def _pnet_stage(
    imgs: torch.Tensor, scales: list[float], pnet: nn.Module, threshold: float, layout: torch.memory_format
) -> tuple[torch.Tensor, torch.Tensor]:
    """First stage: P-net over the pyramid; candidate boxes (squared) and their image indices."""
    from facenet_pytorch.models.utils.detect_face import batched_nms, generateBoundingBox, imresample, rerec

    h, w = imgs.shape[2:4]
    level_boxes, level_inds, level_picks = [], [], []
    offset = 0
    for scale in scales:
        im_data = (imresample(imgs, (int(h * scale + 1), int(w * scale + 1))) - 127.5) * 0.0078125
        reg, probs = pnet(im_data.contiguous(memory_format=layout))
        boxes_scale, image_inds_scale = generateBoundingBox(reg, probs[:, 1], scale, threshold)
        level_boxes.append(boxes_scale)
        level_inds.append(image_inds_scale)
        pick = batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], image_inds_scale, 0.5)
        level_picks.append(pick + offset)
        offset += boxes_scale.shape[0]
    picks = torch.cat(level_picks, dim=0)
    boxes, image_inds = torch.cat(level_boxes, dim=0)[picks], torch.cat(level_inds, dim=0)[picks]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    qq1 = boxes[:, 0] + boxes[:, 5] * regw
    qq2 = boxes[:, 1] + boxes[:, 6] * regh
    qq3 = boxes[:, 2] + boxes[:, 7] * regw
    qq4 = boxes[:, 3] + boxes[:, 8] * regh
    return rerec(torch.stack([qq1, qq2, qq3, qq4, boxes[:, 4]]).permute(1, 0)), image_inds


def _crops(imgs: torch.Tensor, boxes: torch.Tensor, image_inds: torch.Tensor, size: int) -> torch.Tensor:
    """``size`` x ``size`` resampled crops of ``boxes`` (clipped to the image), one per box."""
    from facenet_pytorch.models.utils.detect_face import imresample, pad

    h, w = imgs.shape[2:4]
    y, ey, x, ex = pad(boxes, w, h)
    return torch.cat(
        [
            imresample(imgs[image_inds[k], :, (y[k] - 1) : ey[k], (x[k] - 1) : ex[k]].unsqueeze(0), (size, size))
            for k in range(len(y))
            if ey[k] > (y[k] - 1) and ex[k] > (x[k] - 1)
        ],
        dim=0,
    )


def _rnet_stage(
    imgs: torch.Tensor,
    boxes: torch.Tensor,
    image_inds: torch.Tensor,
    rnet: nn.Module,
    threshold: float,
    layout: torch.memory_format,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Second stage: R-net on 24x24 crops; the boxes that pass, refined and squared."""
    from facenet_pytorch.models.utils.detect_face import batched_nms, bbreg, fixed_batch_process, rerec

    out = fixed_batch_process(
        ((_crops(imgs, boxes, image_inds, 24) - 127.5) * 0.0078125).contiguous(memory_format=layout), rnet
    )
    out0 = out[0].permute(1, 0)
    score = out[1].permute(1, 0)[1, :]
    ipass = score > threshold
    boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
    image_inds = image_inds[ipass]
    mv = out0[:, ipass].permute(1, 0)
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
    return rerec(bbreg(boxes, mv)), image_inds


def _onet_stage(
    imgs: torch.Tensor,
    boxes: torch.Tensor,
    image_inds: torch.Tensor,
    onet: nn.Module,
    threshold: float,
    layout: torch.memory_format,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Third stage: O-net on 48x48 crops; the final boxes, their image indices and landmarks."""
    from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, bbreg, fixed_batch_process

    out = fixed_batch_process(
        ((_crops(imgs, boxes, image_inds, 48) - 127.5) * 0.0078125).contiguous(memory_format=layout), onet
    )
    out0 = out[0].permute(1, 0)
    points = out[1].permute(1, 0)
    score = out[2].permute(1, 0)[1, :]
    ipass = score > threshold
    points = points[:, ipass]
    boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
    image_inds = image_inds[ipass]
    mv = out0[:, ipass].permute(1, 0)
    w_i = boxes[:, 2] - boxes[:, 0] + 1
    h_i = boxes[:, 3] - boxes[:, 1] + 1
    points_x = w_i.repeat(5, 1) * points[:5, :] + boxes[:, 0].repeat(5, 1) - 1
    points_y = h_i.repeat(5, 1) * points[5:10, :] + boxes[:, 1].repeat(5, 1) - 1
    points = torch.stack((points_x, points_y)).permute(2, 1, 0)
    boxes = bbreg(boxes, mv)
    pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
    return boxes[pick], image_inds[pick], points[pick]


def _per_image(
    boxes: torch.Tensor, points: torch.Tensor, image_inds: torch.Tensor, batch_size: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Boxes and landmarks as numpy arrays, grouped by the image they were found in."""
    boxes_np = boxes.cpu().numpy()
    points_np = points.cpu().numpy()
    inds_np = image_inds.cpu().numpy()
    return (
        [boxes_np[inds_np == b].copy() for b in range(batch_size)],
        [points_np[inds_np == b].copy() for b in range(batch_size)],
    )
