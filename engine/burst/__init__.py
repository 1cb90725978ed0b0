"""The burst path: RAW frames of a handheld burst merged into one clean RAW frame.

One module per stage, each a set of pure functions on arrays (the HDR+ layout: align, merge,
finish), plus the orchestration and the engine processor:

    raw     Bayer <-> 4 planes, black/white normalisation, noise model, defects, burst checks
    align   coarse-to-fine tile alignment (+ global model, Lucas-Kanade) or OpenCV DIS flow
    merge   HDR+ pairwise Wiener merge in the frequency domain; robust-average and mean baselines
    lens    DNG lens opcodes (WarpRectilinear, FixVignetteRadial, GainMap), correction, a model
    finish  the display ISP: white balance, demosaic, colour matrix, tone and gamma
    fusion  fuse_burst / merged_frame, and BurstFusion, the engine processor "burst_fusion"

Submodules are imported on use (`from engine.burst.fusion import BurstFusion`), so importing the
package costs nothing and engine.processor can name the processor without an import cycle.
"""
