"""Keypoints: the COCO-WholeBody 133 layout (:mod:`animate.pose.layout`) and DWPose-style pose maps (:mod:`animate.pose.render`)."""
