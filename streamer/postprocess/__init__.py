"""From the engine's raw output to detections: NMS and box decoding (`nms`), and the layouts of graphs that
do their own NMS (`end2end`)."""
