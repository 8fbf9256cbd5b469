"""Keypoints: the COCO-WholeBody 133 layout (:mod:`common.pose.layout`) and DWPose-style pose maps (:mod:`common.pose.render`)."""
