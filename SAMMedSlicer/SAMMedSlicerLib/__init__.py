"""SAMMedSlicerLib: the Qt-free logic of the SAMMed Slicer module.

client (HTTP to the worker), server_process (run the local worker), volume (voxels + LPS geometry),
prompts (RAS → slice pixels), segments (write a slice as the Segment Editor would, undo),
parameters (scene-saved state), session (prompts → worker → segment), batch (cohort runs: start, progress,
finished cases).
"""
